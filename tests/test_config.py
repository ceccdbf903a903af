"""The shape of a GPT (minillm/core/config.py): GPTConfig's checks, GPT-2's parameter names and
shapes, and the one check of a dict of tensors against them."""
import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.core.config import check_tensors, param_shapes


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=10, n_head=3), "divisible by n_head"),
    (dict(dtype="float16"), "unknown dtype"),
    (dict(pos_encoding="rotary"), "unknown pos_encoding"),
    (dict(n_layer=0), "n_layer must be an integer >= 1, got 0"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (dict(dropout="x"), r"dropout must be a number in \[0, 1\), got 'x'"),
    (dict(n_head=2.0), "n_head must be an integer >= 1, got 2.0"),
    (dict(n_embd=True), "n_embd must be an integer >= 1, got True"),
    (dict(dropout=float("nan")), "dropout must be a number"),
    (dict(dtype=""), "dtype must be a non-empty string"),
    (dict(pos_encoding="sinusoidal", n_embd=9, n_head=3), "even n_embd"),
    (dict(pos_encoding="rope", n_embd=12, n_head=4), "even head size, got n_embd / n_head = 3"),
    (dict(norm="batchnorm"), "unknown norm 'batchnorm'"),
    (dict(mlp="relu"), "unknown mlp 'relu'"),
    (dict(n_kv_head=3), r"n_kv_head \(3\) must divide n_head \(4\)"),
    (dict(n_kv_head=-1), "n_kv_head must be an integer >= 0"),
    (dict(intermediate_size=2.5), "intermediate_size must be an integer >= 0"),
    (dict(bias="no"), "bias must be true or false"),
    (dict(tie_embeddings=1), "tie_embeddings must be true or false"),
    (dict(norm_eps=0.0), r"norm_eps must be a number in \(0, 1\)"),
    (dict(rope_theta=-1.0), "rope_theta must be a number > 1, got -1.0"),
    (dict(rope_theta="big"), "rope_theta must be a number"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_parameter_names_and_shapes_follow_gpt2():
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=12)
    params = GPT(cfg).params
    V, C = 50, 12
    assert params["wte.weight"].shape == (V, C) and params["wpe.weight"].shape == (16, C)
    for i in range(2):
        h = f"h.{i}."
        expected = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C),
                    "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C),
                    "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
                    "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
                    "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
        for name, shape in expected.items():
            assert params[h + name].shape == shape
    assert params["ln_f.weight"].shape == (C,) and params["ln_f.bias"].shape == (C,)
    assert len(params) == 2 + 12 * 2 + 2
    sin = GPT(GPTConfig(**{**cfg.to_dict(), "pos_encoding": "sinusoidal"})).params
    assert "wpe.weight" not in sin and len(sin) == len(params) - 1


def test_head_size_and_the_dict_round_trip():
    config = GPTConfig(n_embd=96, n_head=3, dropout=0.1)
    assert config.head_size == 32
    assert GPTConfig(**config.to_dict()) == config


def test_check_tensors_names_what_is_wrong():
    expected = param_shapes(GPTConfig(vocab_size=10, n_layer=1, n_embd=8, n_head=2))
    good = {name: np.zeros(shape) for name, shape in expected.items()}
    check_tensors(good, expected, "good")
    missing = {k: v for k, v in good.items() if k != "ln_f.bias"}
    with pytest.raises(ValueError, match=r"^here: missing 1 tensor\(s\): ln_f\.bias \(8,\)$"):
        check_tensors(missing, expected, "here")
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\): extra"):
        check_tensors({**good, "extra": np.zeros(1)}, expected, "here")
    with pytest.raises(ValueError, match=r"'wte\.weight' has shape \(8, 10\), expected \(10, 8\)"):
        check_tensors({**good, "wte.weight": np.zeros((8, 10))}, expected, "here")
    with pytest.raises(ValueError, match="'ln_f.bias' has dtype int64, expected floats"):
        check_tensors({**good, "ln_f.bias": np.zeros(8, dtype=np.int64)}, expected, "here")


def test_defaults_are_gpt2_and_the_llama_preset_sets_the_block():
    gpt2 = GPTConfig()
    assert (gpt2.norm, gpt2.pos_encoding, gpt2.mlp, gpt2.bias, gpt2.tie_embeddings) == \
        ("layernorm", "learned", "gelu", True, True)
    assert gpt2.kv_heads == gpt2.n_head and gpt2.inner_size == 4 * gpt2.n_embd
    llama = GPTConfig.llama()
    assert (llama.norm, llama.pos_encoding, llama.mlp, llama.bias, llama.tie_embeddings) == \
        ("rmsnorm", "rope", "swiglu", False, False)
    assert llama.kv_heads == 2 and llama.inner_size == 344          # 8 * 128 / 3 -> 344
    assert GPTConfig.llama(n_head=8).kv_heads == 4                   # n_head / 2
    assert GPTConfig.llama(n_head=1, n_embd=64).kv_heads == 1
    assert GPTConfig.llama(mlp="gelu", tie_embeddings=True).mlp == "gelu"   # overrides win
    assert GPTConfig(n_kv_head=None).n_kv_head == 0


def test_config_of_an_older_version_still_loads():
    old = {k: v for k, v in GPTConfig().to_dict().items()
           if k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout",
                    "pos_encoding", "dtype")}
    assert GPTConfig(**old) == GPTConfig()


@pytest.mark.parametrize("kwargs", [dict(), dict(n_kv_head=2), dict(n_kv_head=1, mlp="swiglu"),
                                    dict(bias=False), dict(norm="rmsnorm"),
                                    dict(tie_embeddings=False, pos_encoding="rope")])
def test_parameter_shapes_of_the_options(kwargs):
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=4, n_embd=16, **kwargs)
    shapes = param_shapes(cfg)
    nkv, hs, I = cfg.kv_heads, 4, cfg.inner_size
    assert shapes["h.0.attn.c_attn.weight"] == (16, (4 + 2 * nkv) * hs)
    fc = 2 * I if cfg.mlp == "swiglu" else I
    assert shapes["h.0.mlp.c_fc.weight"] == (16, fc) and shapes["h.0.mlp.c_proj.weight"] == (I, 16)
    assert ("h.0.attn.c_attn.bias" in shapes) == cfg.bias
    assert ("h.0.ln_1.bias" in shapes) == ("ln_f.bias" in shapes) == \
        (cfg.bias and cfg.norm == "layernorm")
    assert ("lm_head.weight" in shapes) == (not cfg.tie_embeddings)
    assert ("wpe.weight" in shapes) == (cfg.pos_encoding == "learned")
    assert {k: v.shape for k, v in GPT(cfg).params.items()} == shapes
