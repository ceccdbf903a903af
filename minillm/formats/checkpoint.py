"""Models on disk: minillm's training checkpoints, and Hugging Face GPT-2 and Llama folders
as models.

A training run keeps everything in one safetensors file:

    out_dir/
      checkpoint.safetensors   params.<name>, adam.m.<name>, adam.v.<name> tensors, and in the
                               header's metadata: the configs, the iteration, the RNG state, the
                               loss history and the tokenizer (all JSON)
      tokenizer.json           the same tokenizer, for reading by people and other tools
      loss.png                 the loss curves, drawn at the end of a run

Everything needed to resume lives in the one file, so replacing it with ``os.replace`` (which the
safetensors writer does) swaps a complete checkpoint for another: a run killed mid-write keeps
its last good checkpoint.

``load_model(path)`` reads either kind of folder, so every command that starts from a model
(``sample``, ``finetune``) accepts both. A checkpoint written before a config field existed
loads with that field's default (the GPT-2 block).
"""
import json
from dataclasses import dataclass
from pathlib import Path

from ..core.config import GPTConfig, check_tensors, param_shapes
from ..core.model import GPT
from ..tokenizers import tokenizer_from_dict
from . import safetensors

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "minillm-checkpoint-1"


def checkpoint_path(path):
    """A run folder or the checkpoint file itself -> the checkpoint file's path."""
    path = Path(path)
    return path / CHECKPOINT if path.is_dir() or path.suffix != ".safetensors" else path


def save_checkpoint(out_dir, model, tokenizer, *, optimizer=None, state=None):
    """Write model (+ optimizer) and a JSON-able ``state`` dict to out_dir/checkpoint.safetensors.

    >>> save_checkpoint("out", model, tokenizer, optimizer=opt, state={"iter": 1})  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"params.{k}": v for k, v in model.params.items()}
    if optimizer is not None:
        tensors.update({f"adam.m.{k}": v for k, v in optimizer.m.items()})
        tensors.update({f"adam.v.{k}": v for k, v in optimizer.v.items()})
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(model.config.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "state": json.dumps({**(state or {}), "adam_t": optimizer.t if optimizer else 0}),
    }
    path = out_dir / CHECKPOINT
    safetensors.save_file(tensors, path, metadata=metadata)
    return path


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

    >>> ckpt = load_checkpoint("out")                       # doctest: +SKIP
    >>> ckpt.model, ckpt.tokenizer, ckpt.state["iter"]      # doctest: +SKIP
    """
    path = checkpoint_path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `python -m minillm train`"
                                " or give the folder it was saved to")
    tensors = safetensors.load_file(path)          # raises ValueError on a corrupt/truncated file
    meta = safetensors.read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a minillm checkpoint "
                         f"(format {meta.get('format')!r}); for a Hugging Face folder use "
                         "--pretrained")
    try:
        config = json.loads(meta["model_config"])
        tokenizer = json.loads(meta["tokenizer"])
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: damaged checkpoint metadata ({e})") from None
    if dtype is not None:
        config["dtype"] = dtype
    config = GPTConfig(**config)
    params = {k[len("params."):]: v for k, v in tensors.items() if k.startswith("params.")}
    expected = param_shapes(config)
    check_tensors(params, expected, str(path))
    params = {k: params[k].astype(config.dtype, copy=False) for k in expected}  # GPT-2's order
    tokenizer = tokenizer_from_dict(tokenizer, path)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model only "
                         f"{config.vocab_size}")
    adam = None
    if any(k.startswith("adam.") for k in tensors):
        adam = {"t": state.get("adam_t", 0),
                "m": {k[len("adam.m."):]: v for k, v in tensors.items() if k.startswith("adam.m.")},
                "v": {k[len("adam.v."):]: v for k, v in tensors.items() if k.startswith("adam.v.")}}
    return Checkpoint(GPT(config, params=params), tokenizer, adam, state, path)


def load_pretrained(folder, dtype="float32"):
    """Load a Hugging Face GPT-2 or Llama folder -> (GPT, BPETokenizer or None).

    The same as ``GPT.from_pretrained(folder)`` with the tokenizer handed back beside the model.

    >>> model, tokenizer = load_pretrained("gpt2-folder", dtype="float64")   # doctest: +SKIP
    """
    model = GPT.from_pretrained(folder, dtype)
    return model, model.tokenizer


def load_model(path):
    """(model, tokenizer, kind) from a minillm run folder ("minillm") or a Hugging Face GPT-2
    ("gpt2") or Llama ("llama") folder.

    >>> model, tokenizer, kind = load_model("out")                         # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if path.is_file() or (path / CHECKPOINT).is_file():
        ckpt = load_checkpoint(path)
        return ckpt.model, ckpt.tokenizer, "minillm"
    if (path / "config.json").is_file():
        model, tokenizer = load_pretrained(path)
        if tokenizer is None:
            raise FileNotFoundError(f"{path} has no vocab.json/merges.txt, so its text cannot be "
                                    "encoded; copy the tokenizer files of the model next to it")
        return model, tokenizer, "llama" if model.config.pos_encoding == "rope" else "gpt2"
    raise FileNotFoundError(f"{path} is neither a minillm checkpoint folder ({CHECKPOINT}) nor a "
                            "Hugging Face folder (config.json + model.safetensors)")
