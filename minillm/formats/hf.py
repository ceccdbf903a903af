"""GPT-2 and Llama checkpoints in the folder layout of Hugging Face Transformers, read and written.

A folder holds

    config.json          the shape ("model_type": "gpt2" or "llama"): layers, heads, channels, ...
    model.safetensors    the weights (or shards listed in model.safetensors.index.json)
    vocab.json           the tokenizer (optional): token string -> id
    merges.txt           the tokenizer (optional): BPE merges in rank order

GPT-2's tensors are named like minillm's (``h.0.attn.c_attn.weight`` ...), sometimes with a
``transformer.`` prefix, and GPT-2's ``Conv1D`` stores weights (in, out) like minillm's linear
layers: reading is read the config, check every tensor, put the arrays in a dict. Llama's
tensors (``model.layers.0.self_attn.q_proj.weight`` ...) are renamed, transposed and
concatenated by ``hf_llama.py``, which has the table. This module deals in configs and dicts of
arrays; ``GPT.from_pretrained`` / ``GPT.save_pretrained`` (and ``minillm.load_pretrained``) turn
them into models. Which format ``write_folder`` writes follows from the config: GPT-2's block
as GPT-2, the Llama-style block (RMSNorm, rotary positions, SwiGLU) as Llama.

    >>> config, params, tokenizer = read_folder("gpt2-folder")          # doctest: +SKIP

Shape legend: V vocabulary, C channels (n_embd).
"""
import json
import re
from pathlib import Path

import numpy as np

from ..core.config import GPTConfig, check_tensors, param_shapes
from ..tokenizers.bpe import BPETokenizer
from .hf_llama import (config_from_llama, config_to_llama, llama_problems, params_from_llama,
                       params_to_llama)
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
        raise bad(f"model_type is {hf['model_type']!r}; minillm reads GPT-2 and Llama "
                  "checkpoints only")
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
                           dropout=float(numbers.get("resid_pdrop", 0.0)), dtype=dtype,
                           norm_eps=float(numbers.get("layer_norm_epsilon", LAYER_NORM_EPS)),
                           intermediate_size=hf.get("n_inner") or 0)
    except ValueError as e:
        raise bad(e) from None
    act = hf.get("activation_function", "gelu_new")
    if act not in GELU_NAMES:
        raise bad(f"activation_function is {act!r}; minillm implements only GPT-2's tanh GELU "
                  f"({' or '.join(GELU_NAMES)})")
    if config.intermediate_size == 4 * config.n_embd:
        config.intermediate_size = 0                       # the default, 4 * n_embd
    unsupported = {"tie_word_embeddings": False, "scale_attn_weights": False,
                   "scale_attn_by_inverse_layer_idx": True, "add_cross_attention": True}
    for key, value in unsupported.items():
        if not isinstance(hf.get(key, not value), bool):
            raise bad(f"{key} must be true or false, got {hf[key]!r}")
        if hf.get(key, not value) == value:
            raise bad(f"{key} is {str(value).lower()}, which minillm does not support "
                      f"(its GPT-2 has tied embeddings, 1/sqrt(hs) attention, no cross-attention)")
    return config


def gpt2_problems(config):
    """What keeps ``config`` from being a GPT-2 checkpoint: a list of reasons (empty: none)."""
    problems = []
    if config.pos_encoding != "learned":
        problems.append(f"{config.pos_encoding!r} positions (GPT-2 has learned positions, "
                        "wpe.weight)")
    for name, value in (("norm", "layernorm"), ("mlp", "gelu"), ("bias", True),
                        ("tie_embeddings", True)):
        if getattr(config, name) != value:
            problems.append(f"{name} is {getattr(config, name)!r} (GPT-2 has {value!r})")
    if config.kv_heads != config.n_head:
        problems.append(f"{config.kv_heads} key/value heads for {config.n_head} query heads "
                        "(GPT-2 has as many of each)")
    return problems


def config_to_gpt2(config, tokenizer=None):
    """GPTConfig -> the dict of a GPT-2 config.json that Transformers' GPT2LMHeadModel accepts."""
    problems = gpt2_problems(config)
    if problems:
        raise ValueError(f"not a GPT-2 model: {'; '.join(problems)}")
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
        "n_inner": config.intermediate_size or None,       # None means 4 * n_embd
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
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
    """A Hugging Face GPT-2 or Llama folder -> (GPTConfig, params, BPETokenizer or None).

    F16/BF16 weights are converted to ``dtype`` (float32 or float64). A tokenizer with ids the
    model cannot embed (id >= vocab_size) is an error."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: checkpoint folder not found")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found; a checkpoint folder needs config.json "
                                "next to model.safetensors")
    hf = read_json(config_path)
    if not isinstance(hf, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    llama = hf.get("model_type") == "llama"
    config = (config_from_llama if llama else config_from_gpt2)(hf, dtype, config_path)
    tensors = _read_tensors(folder)
    files = ", ".join(sorted({str(path) for _, path in tensors.values()}))
    tensors = {name: a for name, (a, _) in tensors.items()}
    params = params_from_llama(tensors, config, files) if llama else \
        params_from_gpt2(tensors, config, files)
    tokenizer = read_tokenizer(folder)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{folder}: the tokenizer has ids up to {tokenizer.vocab_size - 1}, but "
                         f"config.json has vocab_size {config.vocab_size}")
    return config, params, tokenizer


def write_folder(folder, config, params, tokenizer=None):
    """Write a folder Transformers can load: config.json, model.safetensors (float32) and, for a
    BPE ``tokenizer``, vocab.json + merges.txt. GPT-2's block is written as GPT2LMHeadModel
    (names ``transformer.*``), the Llama-style block (RMSNorm, rotary positions, SwiGLU) as
    LlamaForCausalLM (with a tokenizer_config.json naming GPT-2's tokenizer class, so
    ``AutoTokenizer`` reads vocab.json + merges.txt); any other mix is an error.

    Everything is checked before anything is written; every file is written atomically and the
    folder is created if needed."""
    gpt2, llama = gpt2_problems(config), llama_problems(config)
    if gpt2 and llama:
        raise ValueError("this model can be saved neither as GPT-2 (it has "
                         f"{'; '.join(gpt2)}) nor as Llama (its {'; '.join(llama)}); keep it as a "
                         "minillm checkpoint (save_checkpoint)")
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
    if not gpt2:
        tensors = {"transformer." + name: np.asarray(array, dtype=np.float32)
                   for name, array in params.items()}
        hf_config = config_to_gpt2(config, tokenizer)
    else:
        tensors, hf_config = params_to_llama(params, config), config_to_llama(config, tokenizer)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.to_gpt2(folder)
        if gpt2:
            eot = "<|endoftext|>" if tokenizer.eot_token is not None else None
            atomic_write_text(folder / "tokenizer_config.json", json.dumps(
                {"tokenizer_class": "GPT2Tokenizer", "model_max_length": config.block_size,
                 "bos_token": eot, "eos_token": eot, "unk_token": eot}, indent=2) + "\n")
    atomic_write_text(folder / "config.json", json.dumps(hf_config, indent=2) + "\n")
