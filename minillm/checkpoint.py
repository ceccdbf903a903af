"""Training checkpoints: one safetensors file per run folder, written atomically.

    out_dir/
      checkpoint.safetensors   params.<name>, adam.m.<name>, adam.v.<name> tensors, and in the
                               header's metadata: the configs, the iteration, the RNG state, the
                               loss history and the tokenizer (all JSON)
      tokenizer.json           the same tokenizer, for reading by people and other tools
      loss.png                 the loss curves, drawn at the end of a run

Everything needed to resume lives in the one file, so replacing it with ``os.replace`` (which the
safetensors writer does) swaps a complete checkpoint for another: a run killed mid-write keeps
its last good checkpoint.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import safetensors
from .model import GPT, GPTConfig, param_shapes
from .tokenizer import CharTokenizer

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "minillm-checkpoint-1"


def checkpoint_path(path):
    """A run folder or the checkpoint file itself -> the checkpoint file's path."""
    path = Path(path)
    return path / CHECKPOINT if path.is_dir() or path.suffix != ".safetensors" else path


def check_params(params, cfg, source):
    """Raise a ValueError naming the first tensor that is missing, unexpected or misshapen."""
    expected = param_shapes(cfg)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        raise ValueError(f"{source} does not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != tuple(shape):
            raise ValueError(f"{source}: tensor {name} has shape {tuple(params[name].shape)}, "
                             f"the model expects {tuple(shape)}")


def save_checkpoint(out_dir, model, tokenizer, optimizer=None, state=None):
    """Write model (+ optimizer) and a JSON-able ``state`` dict to out_dir/checkpoint.safetensors."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"params.{k}": v for k, v in model.params.items()}
    if optimizer is not None:
        tensors.update({f"adam.m.{k}": v for k, v in optimizer.m.items()})
        tensors.update({f"adam.v.{k}": v for k, v in optimizer.v.items()})
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(model.config.to_dict()),
        "tokenizer": json.dumps(tokenizer_to_dict(tokenizer)),
        "state": json.dumps({**(state or {}), "adam_t": optimizer.t if optimizer else 0}),
    }
    path = out_dir / CHECKPOINT
    safetensors.save_file(tensors, path, metadata=metadata)
    return path


def tokenizer_to_dict(tokenizer):
    if isinstance(tokenizer, CharTokenizer):
        return {"type": "char", "chars": tokenizer.chars}
    return tokenizer.to_dict()      # the BPE tokenizer describes itself


def tokenizer_from_dict(d, source):
    if d.get("type") == "char":
        return CharTokenizer(d["chars"])
    if d.get("type") == "bpe":
        from .bpe import BPETokenizer
        return BPETokenizer.from_dict(d)
    raise ValueError(f"{source}: unknown tokenizer type {d.get('type')!r}")


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns."""
    model: GPT
    tokenizer: object         # CharTokenizer or BPETokenizer
    adam: dict                # {"t", "m", "v"} for AdamW.load_state_dict, or None
    state: dict               # iteration, RNG state, loss history, configs
    path: Path


def load_checkpoint(path, dtype=None):
    """Read a checkpoint written by ``save_checkpoint``; clear errors for anything wrong with it.

    >>> ckpt = load_checkpoint("out")            # doctest: +SKIP
    >>> ckpt.model, ckpt.tokenizer, ckpt.state["iter"]  # doctest: +SKIP
    """
    path = checkpoint_path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `python -m minillm train`"
                                " or give the folder it was saved to")
    tensors = safetensors.load_file(path)          # raises ValueError on a corrupt/truncated file
    meta = safetensors.read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a minillm checkpoint "
                         f"(format {meta.get('format')!r}); for a GPT-2 folder use --pretrained")
    try:
        cfg = json.loads(meta["model_config"])
        tok = json.loads(meta["tokenizer"])
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: damaged checkpoint metadata ({e})") from None
    if dtype is not None:
        cfg["dtype"] = dtype
    cfg = GPTConfig(**cfg)
    params = {k[len("params."):]: v.astype(cfg.dtype, copy=False)
              for k, v in tensors.items() if k.startswith("params.")}
    check_params(params, cfg, str(path))
    tokenizer = tokenizer_from_dict(tok, path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model only "
                         f"{cfg.vocab_size}")
    adam = None
    if any(k.startswith("adam.") for k in tensors):
        adam = {"t": state.get("adam_t", 0),
                "m": {k[len("adam.m."):]: v for k, v in tensors.items() if k.startswith("adam.m.")},
                "v": {k[len("adam.v."):]: v for k, v in tensors.items() if k.startswith("adam.v.")}}
    return Checkpoint(GPT(cfg, params=params), tokenizer, adam, state, path)


def rng_state(rng):
    """A Generator's state as JSON-able data (PCG64 keeps two big integers)."""
    return rng.bit_generator.state


def rng_from_state(state):
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
