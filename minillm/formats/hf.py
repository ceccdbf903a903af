"""GPT-2 checkpoints in the folder layout of Hugging Face Transformers, read and written.

A GPT-2 folder holds

    config.json          the shape: n_layer, n_head, n_embd, n_positions, vocab_size, ...
    model.safetensors    the weights, named like minillm's (``h.0.attn.c_attn.weight`` ...),
                         sometimes with a ``transformer.`` prefix
    vocab.json           the tokenizer (optional): token string -> id
    merges.txt           the tokenizer (optional): BPE merges in rank order

minillm's parameters already use GPT-2's names and shapes (its linear layers store weights as
(in, out), like GPT-2's ``Conv1D``), so reading is: read the config, check every tensor, and put
the arrays in a dict. Nothing is transposed or renamed except the optional prefix. This module
deals in configs and dicts of arrays; ``GPT.from_pretrained`` / ``GPT.save_pretrained`` (and
``minillm.load_pretrained``) turn them into models.

    >>> config, params, tokenizer = read_folder("gpt2-folder")          # doctest: +SKIP

Shape legend: V vocabulary, C channels (n_embd).
"""
import json
import math
import re
from pathlib import Path

import numpy as np

from ..core.config import GPTConfig, check_tensors, param_shapes
from ..tokenizers.bpe import BPETokenizer
from ..tokenizers.gpt2_files import GPT2_PATTERN, parse_gpt2_vocab
from .files import atomic_write_text, read_json
from .safetensors import load_file, save_file

# Tensors some checkpoints store that are not parameters: each attention layer's causal mask.
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")    # both are the tanh approximation minillm uses
LAYER_NORM_EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------

def config_from_gpt2(hf, dtype="float32", path="config.json"):
    """A GPT-2 config.json (as a dict) -> GPTConfig; anything minillm cannot run is a ValueError.

    >>> config_from_gpt2({"vocab_size": 50, "n_positions": 32, "n_layer": 2, "n_head": 2,
    ...                   "n_embd": 16}).block_size
    32
    """
    def bad(problem):
        return ValueError(f"{path}: {problem}")

    if hf.get("model_type", "gpt2") != "gpt2":
        raise bad(f"model_type is {hf['model_type']!r}; minillm reads GPT-2 checkpoints only")
    if "n_positions" not in hf and "n_ctx" in hf:
        hf = {**hf, "n_positions": hf["n_ctx"]}            # very old configs name it n_ctx
    required = ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd")
    missing = [k for k in required if k not in hf]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    numbers = {key: hf[key] for key in ("resid_pdrop", "layer_norm_epsilon")
               if hf.get(key) is not None}
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"{key} must be a number, got {value!r}")
    try:
        config = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           dropout=float(numbers.get("resid_pdrop", 0.0)), dtype=dtype)
    except ValueError as e:
        raise bad(e) from None
    act = hf.get("activation_function", "gelu_new")
    if act not in GELU_NAMES:
        raise bad(f"activation_function is {act!r}; minillm implements only GPT-2's tanh GELU "
                  f"({' or '.join(GELU_NAMES)})")
    eps = numbers.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
        raise bad(f"layer_norm_epsilon is {eps}; minillm's LayerNorm uses {LAYER_NORM_EPS}")
    if hf.get("n_inner") not in (None, 4 * config.n_embd):
        raise bad(f"n_inner is {hf['n_inner']}; minillm's MLP has 4 * n_embd = "
                  f"{4 * config.n_embd} units")
    unsupported = {"tie_word_embeddings": False, "scale_attn_weights": False,
                   "scale_attn_by_inverse_layer_idx": True, "add_cross_attention": True}
    for key, value in unsupported.items():
        if not isinstance(hf.get(key, not value), bool):
            raise bad(f"{key} must be true or false, got {hf[key]!r}")
        if hf.get(key, not value) == value:
            raise bad(f"{key} is {str(value).lower()}, which minillm does not support "
                      f"(its GPT-2 has tied embeddings, 1/sqrt(hs) attention, no cross-attention)")
    return config


def config_to_gpt2(config, tokenizer=None):
    """GPTConfig -> the dict of a GPT-2 config.json that Transformers' GPT2LMHeadModel accepts."""
    eot = getattr(tokenizer, "eot_token", None)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,                                   # None means 4 * n_embd
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "dtype": "float32",
    }


# ----------------------------------------------------------------------------------------------
# model.safetensors
# ----------------------------------------------------------------------------------------------

def _read_tensors(folder):
    """All tensors of the folder's safetensors file(s): name -> (array, file it came from)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():                                  # sharded: index.json names the shards
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a \"weight_map\" object")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "pytorch_model.bin").is_file():
        raise FileNotFoundError(
            f"{folder} has pytorch_model.bin but no model.safetensors. minillm reads safetensors "
            "only (a .bin file is a pickle, which can run code when loaded). Convert it with "
            "Transformers: GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder)")
    else:
        raise FileNotFoundError(f"{single}: weights not found (expected a safetensors file)")
    tensors = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard listed in {index.name} not found")
        tensors.update({name: (array, path) for name, array in load_file(path).items()})
    return tensors


def params_from_gpt2(tensors, config, path="model.safetensors"):
    """Checkpoint tensors (name -> array) -> minillm params in ``config.dtype``, checked by name
    and shape. A ``transformer.`` prefix is dropped; the attention-mask buffers are skipped; an
    ``lm_head.weight`` must equal ``wte.weight`` (minillm ties the two)."""
    found, lm_head = {}, None
    for name, array in tensors.items():
        short = name.removeprefix("transformer.")
        if short == "lm_head.weight":
            lm_head = array
        elif not MASK_BUFFER.fullmatch(short):
            if short in found:
                raise ValueError(f"{path}: tensor {short!r} is stored twice (with and without "
                                 "the 'transformer.' prefix)")
            found[short] = array
    expected = param_shapes(config)
    check_tensors(found, expected, path)
    if lm_head is not None and not np.array_equal(lm_head, found["wte.weight"]):
        raise ValueError(f"{path}: lm_head.weight differs from wte.weight (an untied output "
                         "layer); minillm's GPT-2 uses wte.weight for both")
    return {name: found[name].astype(config.dtype, copy=False)   # F16/BF16/F64 -> model's dtype
            for name in expected}


def read_tokenizer(folder):
    """GPT-2's tokenizer from ``folder``: ``vocab.json`` + ``merges.txt``, else the same table and
    merges inside a byte-level BPE ``tokenizer.json`` (what Transformers 5 saves); None if
    absent."""
    folder = Path(folder)
    have = [name for name in ("vocab.json", "merges.txt") if (folder / name).is_file()]
    if len(have) == 2:
        return BPETokenizer.from_gpt2(folder)
    if len(have) == 1:
        other = "merges.txt" if have[0] == "vocab.json" else "vocab.json"
        raise FileNotFoundError(f"{folder / other}: not found, but {have[0]} is there; "
                                "GPT-2's tokenizer needs both files")
    path = folder / "tokenizer.json"
    return _tokenizer_from_json(path, read_json(path)) if path.is_file() else None


def _tokenizer_from_json(path, data):
    """A byte-level BPE tokenizer.json (``model.vocab``, ``model.merges``, ``added_tokens``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" \
            or not pre.get("use_regex", True):
        raise ValueError(f"{path}: not a GPT-2 byte-level BPE tokenizer (model "
                         f"{model.get('type')!r}, pre_tokenizer {pre.get('type')!r})")
    merges = [(n, *(m.split(" ") if isinstance(m, str) else m)) for n, m in
              enumerate(model.get("merges", []), start=1)]        # "a b" or ["a", "b"]
    specials = {t["content"] for t in data.get("added_tokens", [])}
    byte_ids, id_merges, special_ids = parse_gpt2_vocab(model.get("vocab", {}), merges, specials,
                                                        str(path), str(path))
    return BPETokenizer(id_merges, byte_ids, special_ids)


# ----------------------------------------------------------------------------------------------
# Whole folders
# ----------------------------------------------------------------------------------------------

def read_folder(folder, dtype="float32"):
    """A Hugging Face GPT-2 folder -> (GPTConfig, params, BPETokenizer or None).

    F16/BF16 weights are converted to ``dtype`` (float32 or float64). A tokenizer with ids the
    model cannot embed (id >= vocab_size) is an error."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: checkpoint folder not found")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found; a GPT-2 folder needs config.json "
                                "next to model.safetensors")
    hf = read_json(config_path)
    if not isinstance(hf, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    config = config_from_gpt2(hf, dtype, config_path)
    tensors = _read_tensors(folder)
    files = sorted({str(path) for _, path in tensors.values()})
    params = params_from_gpt2({name: a for name, (a, _) in tensors.items()}, config,
                              ", ".join(files))
    tokenizer = read_tokenizer(folder)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{folder}: the tokenizer has ids up to {tokenizer.vocab_size - 1}, but "
                         f"config.json has vocab_size {config.vocab_size}")
    return config, params, tokenizer


def write_folder(folder, config, params, tokenizer=None):
    """Write a GPT-2 folder Transformers can load: config.json, model.safetensors (float32,
    names ``transformer.*``) and, for a BPE ``tokenizer``, vocab.json + merges.txt.

    Everything is checked before anything is written; every file is written atomically and the
    folder is created if needed."""
    if config.pos_encoding != "learned":
        raise ValueError(f"a model with {config.pos_encoding!r} positions cannot be saved as "
                         "GPT-2, which has learned positions (wpe.weight); train with "
                         "pos_encoding='learned' to export")
    if tokenizer is not None:
        if not isinstance(tokenizer, BPETokenizer):
            raise ValueError(f"only a BPETokenizer can be written as vocab.json + merges.txt, got "
                             f"{type(tokenizer).__name__}; save it on its own with "
                             "tokenizer.save()")
        if tokenizer.pattern != GPT2_PATTERN:
            raise ValueError("vocab.json + merges.txt imply GPT-2's pre-tokenization pattern; this "
                             f"tokenizer uses {tokenizer.pattern!r}, so save it with "
                             "tokenizer.save()")
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                             f"{config.vocab_size} (vocab_size)")
    check_tensors(params, param_shapes(config), "the model's parameters")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"transformer." + name: np.asarray(array, dtype=np.float32)
               for name, array in params.items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.to_gpt2(folder)
    atomic_write_text(folder / "config.json",
                      json.dumps(config_to_gpt2(config, tokenizer), indent=2) + "\n")
