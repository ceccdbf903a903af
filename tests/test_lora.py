"""LoRA: gradient checks of both layer pairs and of every adapter through the whole model,
start at the base model, merge equivalence, frozen base weights, save/load, counts, dtypes."""
import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.core.gradcheck import dot_loss, grad_errors, numerical_grad, rel_error
from minillm.core.layers import linear_backward, linear_forward
from minillm.core.lora import (TARGETS, LoRA, LoRAConfig, init_adapters, lora_linear_backward,
                          lora_linear_forward, lora_merge_backward, lora_merge_forward)
from minillm.core.optim import AdamW
from minillm.formats.safetensors import load_file, read_metadata, save_file

TINY = dict(vocab_size=11, block_size=5, n_layer=2, n_head=2, n_embd=8, dtype="float64")


def randomize(arrays, rng, scale=0.3):
    """Non-trivial values everywhere (B included), so no check passes because something is 0."""
    for a in arrays.values():
        a += rng.normal(scale=scale, size=a.shape).astype(a.dtype)


def tiny_lora(rank=2, targets=TARGETS, dtype="float64", dropout=0.0, n_embd=8, seed=0, **block):
    cfg = GPTConfig(**{**TINY, "dtype": dtype, "dropout": dropout, "n_embd": n_embd, **block})
    model = GPT(cfg, seed=1)
    return LoRA(model, LoRAConfig(rank=rank, alpha=3.0, targets=targets),
                rng=np.random.default_rng(seed))


def layer_inputs(rng, n_in=5, n_out=4, r=2):
    x = rng.normal(size=(2, 3, n_in))
    W, b = rng.normal(size=(n_in, n_out)), rng.normal(size=n_out)
    A, B = rng.normal(size=(n_in, r)), rng.normal(size=(r, n_out))   # B != 0 on purpose
    return x, W, b, A, B


# -- the two layer pairs -----------------------------------------------------------------------

def test_lora_linear_gradient_check():
    rng = np.random.default_rng(0)
    x, W, b, A, B = layer_inputs(rng)
    scale = 1.5
    out, cache = lora_linear_forward(x, W, b, A, B, scale)
    dout = rng.normal(size=out.shape)
    dx, dA, dB = lora_linear_backward(dout, cache)

    def f():
        return dot_loss(lora_linear_forward(x, W, b, A, B, scale)[0], dout)

    for name, arr, grad in (("x", x, dx), ("A", A, dA), ("B", B, dB)):
        err = rel_error(grad, numerical_grad(f, arr))
        assert err < 1e-6, f"{name}: {err:.2e}"
    assert np.abs(dA).max() > 1e-3 and np.abs(dB).max() > 1e-3       # the checks were not trivial


def test_lora_merge_gradient_check():
    rng = np.random.default_rng(1)
    _, W, _, A, B = layer_inputs(rng)
    scale = 0.7
    W_eff, cache = lora_merge_forward(W, A, B, scale)
    dW_eff = rng.normal(size=W_eff.shape)
    dA, dB = lora_merge_backward(dW_eff, cache)

    def f():
        return dot_loss(lora_merge_forward(W, A, B, scale)[0], dW_eff)

    assert rel_error(dA, numerical_grad(f, A)) < 1e-6
    assert rel_error(dB, numerical_grad(f, B)) < 1e-6


def test_two_path_and_merged_forms_agree():
    rng = np.random.default_rng(2)
    x, W, b, A, B = layer_inputs(rng, n_in=6, n_out=7, r=3)
    scale = 2.0
    W_before = W.copy()
    out1, cache1 = lora_linear_forward(x, W, b, A, B, scale)
    W_eff, merge_cache = lora_merge_forward(W, A, B, scale)
    out2, cache2 = linear_forward(x, W_eff, b)
    np.testing.assert_allclose(out1, out2, rtol=0, atol=1e-12)
    dout = rng.normal(size=out1.shape)
    dx1, dA1, dB1 = lora_linear_backward(dout, cache1)
    dx2, dW_eff, _ = linear_backward(dout, cache2)
    dA2, dB2 = lora_merge_backward(dW_eff, merge_cache)
    for a, b_ in ((dx1, dx2), (dA1, dA2), (dB1, dB2)):
        np.testing.assert_allclose(a, b_, rtol=0, atol=1e-11)
    assert np.array_equal(W, W_before)                                # merging never writes W


# -- the whole model ---------------------------------------------------------------------------

LLAMA = dict(norm="rmsnorm", pos_encoding="rope", mlp="swiglu", bias=False, n_kv_head=1,
             tie_embeddings=False)


@pytest.mark.parametrize("dropout, block", [(0.0, {}), (0.1, {}), (0.0, LLAMA)],
                         ids=["gpt2", "gpt2-dropout", "llama"])
def test_whole_model_gradient_check_of_every_adapter(dropout, block):
    rng = np.random.default_rng(3)
    lora = tiny_lora(dropout=dropout, **block)
    randomize(lora.model.params, rng)
    randomize(lora.adapters, rng)
    idx, targets = rng.integers(0, 11, size=(2, 5)), rng.integers(0, 11, size=(2, 5))
    targets[1, 3] = -1

    def f():  # the same dropout masks on every call
        return lora.loss(idx, targets, train=True, rng=np.random.default_rng(7))

    loss, grads = lora.loss_and_grads(idx, targets, rng=np.random.default_rng(7))
    assert loss == pytest.approx(f(), abs=1e-12)
    assert set(grads) == set(lora.adapters) == {
        f"h.{i}.{t}.lora_{m}" for i in range(2) for t in TARGETS for m in "AB"}
    errors = grad_errors(f, lora.adapters, grads)
    assert set(errors) == set(lora.adapters)
    for name, err in errors.items():
        assert err < 1e-6, f"{name}: {err:.2e}"


def test_zero_B_at_init_gives_exactly_the_base_model():
    lora = tiny_lora()
    assert all(not lora.adapters[k].any() for k in lora.adapters if k.endswith("lora_B"))
    assert all(lora.adapters[k].any() for k in lora.adapters if k.endswith("lora_A"))
    idx = np.random.default_rng(4).integers(0, 11, size=(3, 5))
    assert np.array_equal(lora.forward(idx), lora.model.forward(idx))


def test_init_of_A_is_uniform_in_the_kaiming_bound():
    model = GPT(GPTConfig(vocab_size=11, block_size=5, n_layer=1, n_head=2, n_embd=64))
    adapters = init_adapters(model, LoRAConfig(rank=64, targets=("mlp.c_proj",)),
                             np.random.default_rng(0))
    A = adapters["h.0.mlp.c_proj.lora_A"]                              # in = 4C = 256
    assert A.shape == (256, 64) and np.abs(A).max() <= 1.0 / 16.0
    assert np.abs(A).max() > 0.9 / 16.0                                # fills the whole range


def test_merged_gpt_equals_lora_and_base_is_untouched():
    rng = np.random.default_rng(5)
    lora = tiny_lora()
    randomize(lora.adapters, rng)
    base = {k: v.copy() for k, v in lora.model.params.items()}
    idx = rng.integers(0, 11, size=(2, 5))
    merged = lora.merge()
    np.testing.assert_allclose(merged.forward(idx), lora.forward(idx), rtol=0, atol=1e-10)
    assert not np.allclose(merged.forward(idx), lora.model.forward(idx))   # adapters matter
    for k, v in base.items():
        assert np.array_equal(lora.model.params[k], v), k
        assert merged.params[k] is not lora.model.params[k]            # independent arrays
    W, A, B = "h.1.mlp.c_fc.weight", "h.1.mlp.c_fc.lora_A", "h.1.mlp.c_fc.lora_B"
    expected = base[W] + 1.5 * lora.adapters[A] @ lora.adapters[B]
    np.testing.assert_allclose(merged.params[W], expected, rtol=0, atol=1e-14)


def test_training_adapters_lowers_the_loss_and_never_touches_base_weights():
    rng = np.random.default_rng(6)
    lora = tiny_lora(dtype="float32", targets=("attn.c_attn", "mlp.c_fc"))
    randomize(lora.model.params, rng)          # a "pretrained" base whose features matter
    base = {k: v.copy() for k, v in lora.model.params.items()}
    idx, targets = rng.integers(0, 11, size=(4, 5)), rng.integers(0, 11, size=(4, 5))
    opt = AdamW(lora.adapters, lr=1e-2, weight_decay=0.0, keys=list(lora.adapters))
    first = lora.loss(idx, targets)
    for _ in range(20):
        _, grads = lora.loss_and_grads(idx, targets, train=False)
        assert set(grads) == set(lora.adapters)
        opt.step(grads)
    assert lora.loss(idx, targets) < first - 0.5
    for k, v in base.items():
        assert np.array_equal(lora.model.params[k], v), f"base weight {k} changed"


# -- save / load -------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    lora = tiny_lora(dtype="float32", targets=("attn.c_proj", "mlp.c_proj"), rank=3)
    randomize(lora.adapters, rng)
    path = tmp_path / "adapters.safetensors"
    lora.save(path)
    assert set(load_file(path)) == set(lora.adapters)                  # adapters only
    meta = read_metadata(path)
    assert (meta["rank"], meta["targets"]) == ("3", "attn.c_proj,mlp.c_proj")
    loaded = LoRA.load(path, lora.model)
    assert loaded.config == lora.config
    for k, v in lora.adapters.items():
        assert loaded.adapters[k].dtype == np.float32 and np.array_equal(loaded.adapters[k], v)
    idx = rng.integers(0, 11, size=(2, 5))
    assert np.array_equal(loaded.forward(idx), lora.forward(idx))


def test_adapter_file_that_does_not_match_the_model(tmp_path):
    path = tmp_path / "adapters.safetensors"
    tiny_lora(n_embd=8).save(path)
    wider = GPT(GPTConfig(**{**TINY, "n_embd": 12}))
    with pytest.raises(ValueError, match=r"h\.0\.attn\.c_attn\.lora_A.*shape"):
        LoRA.load(path, wider)
    tensors = load_file(path)
    del tensors["h.1.mlp.c_fc.lora_B"]
    save_file(tensors, path, metadata=read_metadata(path))
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): h\.1\.mlp\.c_fc\.lora_B \(2, 32\)"):
        LoRA.load(path, GPT(GPTConfig(**TINY)))
    deeper = GPT(GPTConfig(**{**TINY, "n_layer": 1}))
    tiny_lora().save(path)
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\): h\.1\..*lora_A"):
        LoRA.load(path, deeper)
    save_file({"w": np.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a LoRA adapter file"):
        LoRA.load(path, deeper)


# -- configuration, counts, dtypes -------------------------------------------------------------

def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown LoRA target projection 'attn.c_q'"):
        LoRAConfig(targets=("attn.c_q",))
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="alpha"):
        LoRAConfig(alpha=0.0)
    with pytest.raises(ValueError, match="at least one target"):
        LoRAConfig(targets=())
    assert LoRAConfig(targets="mlp.c_fc, attn.c_proj").targets == ("mlp.c_fc", "attn.c_proj")
    assert all("help" in f.metadata for f in LoRAConfig.__dataclass_fields__.values())


def test_trainable_and_total_counts():
    C, r, L = 8, 2, 2
    per_target = {"attn.c_attn": r * (C + 3 * C), "attn.c_proj": r * (C + C),
                  "mlp.c_fc": r * (C + 4 * C), "mlp.c_proj": r * (4 * C + C)}
    for targets in (("attn.c_attn",), TARGETS, ("mlp.c_fc", "attn.c_proj")):
        lora = tiny_lora(rank=r, targets=targets)
        expected = L * sum(per_target[t] for t in targets)
        assert lora.num_trainable() == expected
        assert lora.num_total() == lora.model.num_params() + expected


def test_float32_stays_float32():
    rng = np.random.default_rng(8)
    lora = tiny_lora(dtype="float32")
    randomize(lora.adapters, rng)
    assert all(a.dtype == np.float32 for a in lora.adapters.values())
    idx, targets = rng.integers(0, 11, size=(2, 5)), rng.integers(0, 11, size=(2, 5))
    loss, grads = lora.loss_and_grads(idx, targets)
    assert type(loss) is float
    assert all(g.dtype == np.float32 for g in grads.values())
    assert lora.forward(idx).dtype == np.float32
    assert all(p.dtype == np.float32 for p in lora.merge().params.values())
    x, W, b, A, B = (a.astype(np.float32) for a in layer_inputs(rng))
    out, cache = lora_linear_forward(x, W, b, A, B, 2.0)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in lora_linear_backward(out, cache))
    W_eff, cache = lora_merge_forward(W, A, B, 2.0)
    assert W_eff.dtype == np.float32
    assert all(g.dtype == np.float32 for g in lora_merge_backward(W_eff, cache))
