"""Hugging Face Llama checkpoints (``LlamaForCausalLM``) <-> minillm's configs and parameters.

minillm keeps GPT-2's names with fused matrices; Llama's checkpoints store every projection on
its own as an ``nn.Linear`` weight, shaped (out, in). Reading transposes and concatenates,
writing splits and transposes; nothing else changes (no permutation of the q/k rows: Hugging
Face's checkpoints are already in the rotate_half order of ``minillm.core.rope``):

    Hugging Face (N = layer)                           minillm
    model.embed_tokens.weight              (V, C)      wte.weight              (V, C)
    model.layers.N.input_layernorm.weight  (C,)        h.N.ln_1.weight         (C,)
    model.layers.N.self_attn.q_proj.weight (nh hs, C)  h.N.attn.c_attn.weight  (C, (nh+2nkv) hs)
                     ... k_proj.weight     (nkv hs, C)   = [q_proj^T | k_proj^T | v_proj^T]
                     ... v_proj.weight     (nkv hs, C)
    model.layers.N.self_attn.o_proj.weight (C, nh hs)  h.N.attn.c_proj.weight  (C, C) = o_proj^T
    model.layers.N.post_attention_layernorm.weight     h.N.ln_2.weight         (C,)
    model.layers.N.mlp.gate_proj.weight    (I, C)      h.N.mlp.c_fc.weight     (C, 2I)
    model.layers.N.mlp.up_proj.weight      (I, C)        = [gate_proj^T | up_proj^T]
    model.layers.N.mlp.down_proj.weight    (C, I)      h.N.mlp.c_proj.weight   (I, C) = down^T
    model.norm.weight                      (C,)        ln_f.weight             (C,)
    lm_head.weight                         (V, C)      lm_head.weight (untied; absent when tied)

The biases (``attention_bias``: q, k, v and o; ``mlp_bias``: gate, up and down) map the same
way, concatenated like their weights. config.json keys (Transformers 5 writes
``rope_parameters``; 4.x a top-level ``rope_theta``; both are read, both are written):

    vocab_size, hidden_size = n_embd, intermediate_size, num_hidden_layers = n_layer,
    num_attention_heads = n_head, num_key_value_heads = n_kv_head, head_dim = n_embd / n_head,
    max_position_embeddings = block_size, rms_norm_eps = norm_eps, rope_theta,
    tie_word_embeddings, attention_bias = mlp_bias = bias, attention_dropout = dropout

Shape legend: V vocabulary, C channels, nh query heads, nkv key/value heads, hs head size,
I intermediate size.
"""
import numpy as np

from ..core.config import GPTConfig, check_tensors

LLAMA_BLOCK = {  # minillm name (relative to h.N.) -> Hugging Face names (relative to the layer)
    "ln_1": ("input_layernorm",),
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.c_proj": ("self_attn.o_proj",),
    "ln_2": ("post_attention_layernorm",),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.c_proj": ("mlp.down_proj",),
}
SILU_NAMES = ("silu", "swish")          # two names of x * sigmoid(x) in Transformers


def llama_problems(config):
    """What keeps ``config`` from being a Llama checkpoint: a list of reasons (empty: none)."""
    wanted = {"norm": "rmsnorm", "pos_encoding": "rope", "mlp": "swiglu"}
    return [f"{name} is {getattr(config, name)!r} (Llama has {value!r})"
            for name, value in wanted.items() if getattr(config, name) != value]


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------

def config_from_llama(hf, dtype="float32", path="config.json"):
    """A Llama config.json (as a dict) -> GPTConfig; anything minillm cannot run is a ValueError.

    >>> cfg = config_from_llama({"model_type": "llama", "vocab_size": 50, "hidden_size": 16,
    ...     "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2, "rope_theta": 500000.0})
    >>> cfg.norm, cfg.kv_heads, cfg.rope_theta, cfg.block_size, cfg.tie_embeddings
    ('rmsnorm', 2, 500000.0, 2048, False)
    """
    def bad(problem):
        return ValueError(f"{path}: {problem}")

    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    act = hf.get("hidden_act", "silu")
    if act not in SILU_NAMES:
        raise bad(f"hidden_act is {act!r}; minillm's SwiGLU uses SiLU ('silu')")
    for rope in (hf.get("rope_parameters"), hf.get("rope_scaling")):   # 5.x, 4.x
        rope_type = (rope or {}).get("rope_type", (rope or {}).get("type", "default"))
        if rope_type != "default":
            raise bad(f"rope_type is {rope_type!r}; minillm implements only the default "
                      "(unscaled) rotary positions")
    rope = hf.get("rope_parameters") or {}
    n_head, C = hf["num_attention_heads"], hf["hidden_size"]
    n_kv = hf.get("num_key_value_heads") or n_head
    head_dim = hf.get("head_dim")
    if head_dim is not None and isinstance(n_head, int) and isinstance(C, int) and n_head > 0 \
            and head_dim * n_head != C:
        raise bad(f"head_dim is {head_dim}, not hidden_size / num_attention_heads; minillm's "
                  "heads split the channels evenly")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise bad("attention_bias and mlp_bias differ; minillm has one bias option for all "
                  "linear layers")
    try:
        config = GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
            n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=C,
            dropout=float(hf.get("attention_dropout") or 0.0), dtype=dtype, norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), pos_encoding="rope",
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            mlp="swiglu", intermediate_size=hf["intermediate_size"],
            n_kv_head=0 if n_kv == n_head else n_kv, bias=bool(hf.get("attention_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except (ValueError, TypeError) as e:
        raise bad(e) from None
    if config.intermediate_size == GPTConfig(**{**config.to_dict(),
                                                "intermediate_size": 0}).inner_size:
        config.intermediate_size = 0                       # the default: same config as ours
    return config


def config_to_llama(config, tokenizer=None):
    """GPTConfig -> the dict of a config.json that Transformers' LlamaForCausalLM accepts."""
    problems = llama_problems(config)
    if problems:
        raise ValueError(f"not a Llama-style model: {'; '.join(problems)}")
    eot = getattr(tokenizer, "eot_token", None)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.inner_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,                   # where Transformers 4.x reads it
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "dtype": "float32",
    }


# ----------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------

def _pieces(config, name):
    """The widths of the Hugging Face matrices that make minillm's fused ``name``."""
    if name == "attn.c_attn":
        return config.qkv_sizes
    if name == "mlp.c_fc":
        return (config.inner_size, config.inner_size)
    return None


def llama_shapes(config):
    """{Hugging Face name: shape} of every tensor of ``config``'s Llama checkpoint."""
    C, I = config.n_embd, config.inner_size
    out_in = {"attn.c_proj": (C, C), "mlp.c_proj": (C, I)}
    shapes = {"model.embed_tokens.weight": (config.vocab_size, C)}
    for i in range(config.n_layer):
        for ours, theirs in LLAMA_BLOCK.items():
            widths = _pieces(config, ours)
            for k, hf_name in enumerate(theirs):
                prefix = f"model.layers.{i}.{hf_name}"
                if ours.startswith("ln_"):
                    shapes[prefix + ".weight"] = (C,)
                    continue
                out_dim = widths[k] if widths else out_in[ours][0]
                shapes[prefix + ".weight"] = (out_dim, C if widths else out_in[ours][1])
                if config.bias:
                    shapes[prefix + ".bias"] = (out_dim,)
    shapes["model.norm.weight"] = (C,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    return shapes


def params_from_llama(tensors, config, path="model.safetensors"):
    """Checkpoint tensors (Hugging Face names) -> minillm params in ``config.dtype``, checked by
    name and shape (the names and shapes in errors are the file's). Rotary ``inv_freq`` buffers
    are skipped; with tied embeddings an ``lm_head.weight`` must equal the embedding."""
    found = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings and "lm_head.weight" in found:
        lm_head = found.pop("lm_head.weight")
        if not np.array_equal(lm_head, found.get("model.embed_tokens.weight")):
            raise ValueError(f"{path}: lm_head.weight differs from model.embed_tokens.weight, but "
                             "config.json has tie_word_embeddings true")
    check_tensors(found, llama_shapes(config), path)

    def get(name):
        return np.asarray(found[name], dtype=config.dtype)

    params = {"wte.weight": get("model.embed_tokens.weight")}
    for i in range(config.n_layer):
        for ours, theirs in LLAMA_BLOCK.items():
            prefix = [f"model.layers.{i}.{t}" for t in theirs]
            if ours.startswith("ln_"):
                params[f"h.{i}.{ours}.weight"] = get(prefix[0] + ".weight")
                continue
            params[f"h.{i}.{ours}.weight"] = np.ascontiguousarray(
                np.concatenate([get(p + ".weight").T for p in prefix], axis=1))   # (in, out)
            if config.bias:
                params[f"h.{i}.{ours}.bias"] = np.concatenate([get(p + ".bias") for p in prefix])
    params["ln_f.weight"] = get("model.norm.weight")
    if not config.tie_embeddings:
        params["lm_head.weight"] = get("lm_head.weight")
    return params


def params_to_llama(params, config):
    """minillm params -> {Hugging Face name: float32 array (C order)}, the inverse of
    ``params_from_llama`` (a tied model stores no lm_head.weight, as Transformers does)."""
    def put(array):
        return np.ascontiguousarray(array, dtype=np.float32)

    tensors = {"model.embed_tokens.weight": put(params["wte.weight"])}
    for i in range(config.n_layer):
        for ours, theirs in LLAMA_BLOCK.items():
            prefix = [f"model.layers.{i}.{t}" for t in theirs]
            if ours.startswith("ln_"):
                tensors[prefix[0] + ".weight"] = put(params[f"h.{i}.{ours}.weight"])
                continue
            widths = _pieces(config, ours) or (params[f"h.{i}.{ours}.weight"].shape[1],)
            cuts = np.cumsum(widths)[:-1]
            for p, w in zip(prefix, np.split(params[f"h.{i}.{ours}.weight"], cuts, axis=1)):
                tensors[p + ".weight"] = put(w.T)                                # (out, in)
            if config.bias:
                for p, b in zip(prefix, np.split(params[f"h.{i}.{ours}.bias"], cuts)):
                    tensors[p + ".bias"] = put(b)
    tensors["model.norm.weight"] = put(params["ln_f.weight"])
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = put(params["lm_head.weight"])
    return tensors
