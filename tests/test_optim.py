"""Tests for minillm.optim: AdamW, lr_schedule, clip_grad_norm, OptimConfig."""

import dataclasses
import math

import numpy as np
import pytest

from minillm.core.optim import AdamW, OptimConfig, clip_grad_norm, lr_schedule


def make_params(dtype=np.float64):
    return {
        "w": np.array([[1.0, -2.0], [3.0, 0.5]], dtype=dtype),  # 2-D: decayed
        "b": np.array([0.5, -0.5], dtype=dtype),  # 1-D: not decayed
    }


def random_params(rng, dtype=np.float64):
    """A tiny GPT-2-like parameter dict (V=11, C=4)."""
    shapes = {
        "wte.weight": (11, 4),
        "h.0.attn.c_attn.weight": (4, 12),
        "h.0.attn.c_attn.bias": (12,),
        "h.0.ln_1.weight": (4,),
        "h.0.ln_1.bias": (4,),
    }
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


# ----------------------------------------------------------------------------- AdamW


def test_adamw_two_steps_by_hand():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.99, 1e-8, 0.1
    params = make_params()
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)

    # Step 1. m = (1-b1) g, v = (1-b2) g^2, m_hat = m/(1-b1) = g, v_hat = v/(1-b2) = g^2,
    # so the Adam step is lr * g / (|g| + eps) = lr * sign(g) (up to eps ~ 1e-8).
    gw1 = np.array([[0.1, -0.2], [0.3, 0.4]])
    gb1 = np.array([1.0, -0.5])
    opt.step({"w": gw1.copy(), "b": gb1.copy()})
    assert opt.t == 1
    np.testing.assert_allclose(opt.m["w"], 0.1 * gw1, rtol=1e-12)
    np.testing.assert_allclose(opt.v["w"], 0.01 * gw1**2, rtol=1e-12)
    # w: decay 1 - lr*wd = 0.99, then -0.1*sign(g):  [[0.99-0.1, -1.98+0.1], [2.97-0.1, 0.495-0.1]]
    np.testing.assert_allclose(params["w"], [[0.89, -1.88], [2.87, 0.395]], atol=1e-7)
    # b: no decay, [0.5-0.1, -0.5+0.1]
    np.testing.assert_allclose(params["b"], [0.4, -0.4], atol=1e-7)

    # Step 2 for w with the same gradient: m = 0.9*0.1 g + 0.1 g = 0.19 g, m_hat = 0.19 g / (1-0.81) = g;
    # v = 0.99*0.01 g^2 + 0.01 g^2 = 0.0199 g^2, v_hat = 0.0199 g^2 / (1-0.9801) = g^2 -> again lr*sign(g).
    # (Without bias correction the step would be 0.19/sqrt(0.0199) = 1.347 times larger.)
    gw2 = gw1
    # Step 2 for b with g2 = [0.5, 0.5]:
    #   b[0]: m = 0.9*0.1*1.0 + 0.1*0.5 = 0.14,      v = 0.99*0.01*1.0 + 0.01*0.25 = 0.0124
    #   b[1]: m = 0.9*0.1*(-0.5) + 0.1*0.5 = 0.005,  v = 0.99*0.01*0.25 + 0.01*0.25 = 0.004975
    gb2 = np.array([0.5, 0.5])
    opt.step({"w": gw2.copy(), "b": gb2.copy()})
    assert opt.t == 2
    m_b = np.array([0.14, 0.005])
    v_b = np.array([0.0124, 0.004975])
    np.testing.assert_allclose(opt.m["b"], m_b, rtol=1e-12)
    np.testing.assert_allclose(opt.v["b"], v_b, rtol=1e-12)
    m_hat = m_b / (1 - 0.9**2)  # / 0.19
    v_hat = v_b / (1 - 0.99**2)  # / 0.0199; v_hat[1] = 0.25
    b_after_1 = np.array([0.5, -0.5]) - lr * gb1 / (np.abs(gb1) + eps)  # [0.4, -0.4] with eps kept
    expected_b = b_after_1 - lr * m_hat / (np.sqrt(v_hat) + eps)
    np.testing.assert_allclose(params["b"], expected_b, rtol=1e-12)
    # b[1] in plain numbers: -0.4 - 0.1 * (0.005/0.19) / 0.5
    assert params["b"][1] == pytest.approx(-0.4 - 0.1 * (0.005 / 0.19) / 0.5, abs=1e-7)
    # w: 0.99 * w1 - 0.1 * sign(g)
    expected_w = 0.99 * np.array([[0.89, -1.88], [2.87, 0.395]]) - 0.1 * np.sign(gw1)
    np.testing.assert_allclose(params["w"], expected_w, atol=1e-7)


@pytest.mark.parametrize("shape", [(3,), (3, 4), (2, 3, 4)])
def test_weight_decay_only_for_ndim_ge_2(shape):
    # With zero gradients m = v = 0, so the Adam step is 0 / (0 + eps) = 0 and only the decay acts.
    lr, wd = 0.5, 0.2
    p0 = np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)
    params = {"p": p0.copy()}
    opt = AdamW(params, lr=lr, weight_decay=wd)
    opt.step({"p": np.zeros(shape)})
    expected = p0 * (1 - lr * wd) if len(shape) >= 2 else p0  # 1 - 0.5*0.2 = 0.9
    np.testing.assert_array_equal(params["p"], expected)


def test_step_lr_override_is_used_for_step_and_decay():
    params = {"w": np.full((2, 2), 2.0)}
    opt = AdamW(params, lr=1.0, weight_decay=0.1)
    opt.step({"w": np.zeros((2, 2))}, lr=0.5)
    np.testing.assert_array_equal(params["w"], np.full((2, 2), 2.0 * (1 - 0.5 * 0.1)))
    assert opt.lr == 1.0  # the override is for that step only


def test_step_updates_in_place():
    params = make_params()
    ids = {k: id(a) for k, a in params.items()}
    view = params["w"][0]  # another holder of the same memory
    before = view.copy()
    opt = AdamW(params, lr=0.1)
    opt.step({"w": np.ones((2, 2)), "b": np.ones(2)})
    assert {k: id(a) for k, a in params.items()} == ids
    assert opt.params is params
    assert not np.array_equal(view, before)


@pytest.mark.parametrize("grad_dtype", [np.float32, np.float64])
def test_float32_stays_float32(grad_dtype):
    params = make_params(np.float32)
    opt = AdamW(params, lr=0.1)
    for _ in range(3):
        opt.step({"w": np.full((2, 2), 0.3, grad_dtype), "b": np.full(2, -0.3, grad_dtype)})
    for k in params:
        assert params[k].dtype == np.float32
        assert opt.m[k].dtype == np.float32
        assert opt.v[k].dtype == np.float32
    assert opt.state_dict()["m"]["w"].dtype == np.float32


def test_keys_restricts_training_and_state():
    params = make_params()
    w0 = params["w"].copy()
    opt = AdamW(params, lr=0.1, keys=["b"])
    assert set(opt.m) == set(opt.v) == {"b"}
    opt.step({"b": np.ones(2)})  # gradients of frozen params are not needed
    opt.step({"w": np.ones((2, 2)), "b": np.ones(2)})  # ... and ignored when present
    np.testing.assert_array_equal(params["w"], w0)
    # two identical gradients: two steps of lr * sign(g) (see the hand computation above)
    np.testing.assert_allclose(params["b"], [0.5 - 0.2, -0.5 - 0.2], atol=1e-7)
    with pytest.raises(ValueError, match="'nope'"):
        AdamW(params, keys=["nope"])


def test_step_rejects_missing_or_misshapen_grads():
    opt = AdamW(make_params())
    with pytest.raises(ValueError, match="'b'"):
        opt.step({"w": np.ones((2, 2))})
    with pytest.raises(ValueError, match="'w'"):
        opt.step({"w": np.ones((2, 3)), "b": np.ones(2)})
    assert opt.t == 0


def test_adamw_matches_torch_with_changing_lr():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = random_params(rng)
    p_init = {k: a.copy() for k, a in params.items()}
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1
    opt = AdamW(params, betas=(b1, b2), eps=eps, weight_decay=wd)

    tparams = {k: torch.tensor(a.copy(), requires_grad=True) for k, a in params.items()}
    groups = [
        {"params": [t for t in tparams.values() if t.ndim >= 2], "weight_decay": wd},
        {"params": [t for t in tparams.values() if t.ndim < 2], "weight_decay": 0.0},
    ]
    topt = torch.optim.AdamW(groups, lr=1e-3, betas=(b1, b2), eps=eps)

    for it in range(50):
        lr = lr_schedule(it, max_lr=1e-2, min_lr=1e-3, warmup_iters=10, decay_iters=40)
        grads = {k: rng.standard_normal(a.shape) for k, a in params.items()}
        opt.step(grads, lr=lr)
        for k, t in tparams.items():
            t.grad = torch.from_numpy(grads[k].copy())
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()

    for k, t in tparams.items():
        diff = np.max(np.abs(params[k] - t.detach().numpy()))
        assert diff < 1e-6, (k, diff)
        assert np.max(np.abs(params[k] - p_init[k])) > 1e-3  # they did move


def test_state_dict_round_trip_is_bit_identical():
    rng = np.random.default_rng(1)
    p0 = random_params(rng, np.float32)
    grads = [{k: rng.standard_normal(a.shape).astype(np.float32) for k, a in p0.items()} for _ in range(10)]
    lrs = [lr_schedule(i, 1e-2, 1e-3, 3, 8) for i in range(10)]

    # uninterrupted run
    pa = {k: a.copy() for k, a in p0.items()}
    opt_a = AdamW(pa)
    for g, lr in zip(grads, lrs):
        opt_a.step(g, lr=lr)

    # 5 steps, save, fresh optimizer on the saved params, load, 5 more steps
    pb = {k: a.copy() for k, a in p0.items()}
    opt_b = AdamW(pb)
    for g, lr in zip(grads[:5], lrs[:5]):
        opt_b.step(g, lr=lr)
    state = opt_b.state_dict()
    pc = {k: a.copy() for k, a in pb.items()}
    opt_c = AdamW(pc)
    opt_c.load_state_dict(state)
    assert opt_c.t == 5
    for g, lr in zip(grads[5:], lrs[5:]):
        opt_c.step(g, lr=lr)

    for k in p0:
        np.testing.assert_array_equal(pc[k], pa[k])
        assert pc[k].dtype == np.float32


def test_state_dict_returns_copies():
    opt = AdamW(make_params())
    opt.step({"w": np.ones((2, 2)), "b": np.ones(2)})
    state = opt.state_dict()
    state["m"]["w"][...] = 123.0
    assert not np.any(opt.m["w"] == 123.0)
    opt.step({"w": np.ones((2, 2)), "b": np.ones(2)})
    assert state["t"] == 1 and not np.array_equal(state["v"]["b"], opt.v["b"])


@pytest.mark.parametrize(
    "corrupt, key",
    [
        (lambda s: s["m"].pop("b"), "'b'"),  # missing key
        (lambda s: s["v"].__setitem__("extra", np.zeros(2)), "'extra'"),  # unexpected key
        (lambda s: s["v"].__setitem__("w", np.zeros((3, 2))), "'w'"),  # wrong shape
        (lambda s: s.pop("t"), "'t'"),  # no step count
    ],
)
def test_load_state_dict_rejects_mismatch(corrupt, key):
    opt = AdamW(make_params())
    opt.step({"w": np.ones((2, 2)), "b": np.ones(2)})
    state = opt.state_dict()
    corrupt(state)
    fresh = AdamW(make_params())
    with pytest.raises(ValueError, match=key):
        fresh.load_state_dict(state)
    assert fresh.t == 0 and not np.any(fresh.m["w"])  # nothing half-loaded


# ----------------------------------------------------------------------------- lr_schedule

MAX, MIN, WARM, DECAY = 1e-3, 1e-4, 10, 110


def test_lr_warmup():
    # lr = max * (it + 1) / (warm + 1)
    assert lr_schedule(0, MAX, MIN, WARM, DECAY) == pytest.approx(MAX * 1 / 11)
    assert lr_schedule(4, MAX, MIN, WARM, DECAY) == pytest.approx(MAX * 5 / 11)
    assert lr_schedule(WARM - 1, MAX, MIN, WARM, DECAY) == pytest.approx(MAX * 10 / 11)
    warm = [lr_schedule(i, MAX, MIN, WARM, DECAY) for i in range(WARM + 1)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_lr_cosine_decay():
    assert lr_schedule(WARM, MAX, MIN, WARM, DECAY) == pytest.approx(MAX, rel=1e-12)  # cos(0) = 1
    mid = (WARM + DECAY) // 2  # ratio 0.5, cos(pi/2) = 0
    assert lr_schedule(mid, MAX, MIN, WARM, DECAY) == pytest.approx((MAX + MIN) / 2)
    # ratio 0.25: min + 0.5 * (1 + cos(pi/4)) * (max - min)
    quarter = WARM + (DECAY - WARM) // 4
    expected = MIN + 0.5 * (1 + math.sqrt(2) / 2) * (MAX - MIN)
    assert lr_schedule(quarter, MAX, MIN, WARM, DECAY) == pytest.approx(expected)
    decay = [lr_schedule(i, MAX, MIN, WARM, DECAY) for i in range(WARM, DECAY + 1)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


@pytest.mark.parametrize("it", [DECAY, DECAY + 1, 10 * DECAY])
def test_lr_after_decay_is_min(it):
    assert lr_schedule(it, MAX, MIN, WARM, DECAY) == MIN


@pytest.mark.parametrize("it", [0, WARM - 1, WARM, 50, DECAY, DECAY + 5])
def test_lr_is_python_float(it):
    lr = lr_schedule(np.int64(it), np.float32(MAX), np.float32(MIN), WARM, DECAY)
    assert type(lr) is float


def test_lr_without_warmup_and_bad_args():
    assert lr_schedule(0, MAX, MIN, 0, DECAY) == MAX
    assert lr_schedule(5, MAX, MIN, 5, 5) == MIN  # no decay phase: straight to min_lr
    with pytest.raises(ValueError):
        lr_schedule(0, MAX, MIN, 20, 10)


# ----------------------------------------------------------------------------- clip_grad_norm


def test_clip_grad_norm_value_and_clipping():
    grads = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert norm == pytest.approx(13.0)  # sqrt(9 + 16 + 144)
    assert type(norm) is float
    coef = 1.0 / (13.0 + 1e-6)
    np.testing.assert_allclose(grads["a"], [3.0 * coef, 4.0 * coef], rtol=1e-12)
    np.testing.assert_allclose(grads["b"], [[12.0 * coef]], rtol=1e-12)
    after = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
    assert after == pytest.approx(1.0, abs=1e-6)


def test_clip_grad_norm_at_the_boundary_uses_torch_formula():
    # norm == max_norm: c = 13 / (13 + 1e-6) < 1, so torch (and we) still scale, by 1 - 7.7e-8
    grads = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}
    clip_grad_norm(grads, max_norm=13.0)
    coef = 13.0 / (13.0 + 1e-6)
    np.testing.assert_allclose(grads["a"], [3.0 * coef, 4.0 * coef], rtol=1e-12)


@pytest.mark.parametrize("max_norm", [13.0 + 1e-3, 100.0, math.inf])
def test_clip_grad_norm_leaves_small_grads_alone(max_norm):
    grads = {"a": np.array([3.0, 4.0], np.float32), "b": np.array([[12.0]], np.float32)}
    ids = {k: id(g) for k, g in grads.items()}
    assert clip_grad_norm(grads, max_norm) == pytest.approx(13.0)
    np.testing.assert_array_equal(grads["a"], np.array([3.0, 4.0], np.float32))
    np.testing.assert_array_equal(grads["b"], np.array([[12.0]], np.float32))
    assert {k: id(g) for k, g in grads.items()} == ids


def test_clip_grad_norm_float32_accumulates_in_float64():
    # 10^6 entries of 0.1: exact norm is 0.1 * 1000 = 100 (up to float32 rounding of 0.1)
    g = {"x": np.full(10**6, 0.1, np.float32)}
    norm = clip_grad_norm(g, max_norm=1.0)
    assert norm == pytest.approx(float(np.float32(0.1)) * 1000, rel=1e-12)
    assert g["x"].dtype == np.float32


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_grad_norm_non_finite_is_returned_untouched(bad):
    grads = {"a": np.array([1.0, bad]), "b": np.array([2.0])}
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert not math.isfinite(norm)
    assert grads["a"][0] == 1.0 and grads["b"][0] == 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(dtype, max_norm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    grads = {k: a * 3 for k, a in random_params(rng, dtype).items()}
    tensors = []
    for a in grads.values():
        t = torch.zeros(a.shape, dtype=torch.from_numpy(a).dtype, requires_grad=True)
        t.grad = torch.from_numpy(a.copy())
        tensors.append(t)
    tnorm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    norm = clip_grad_norm(grads, max_norm)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert norm == pytest.approx(tnorm, rel=rtol)
    for a, t in zip(grads.values(), tensors):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=rtol, atol=0)


def test_clip_grad_norm_rejects_non_positive_max_norm():
    with pytest.raises(ValueError):
        clip_grad_norm({"a": np.ones(2)}, 0.0)


# ----------------------------------------------------------------------------- OptimConfig


def test_optim_config_defaults_and_help():
    cfg = OptimConfig()
    assert (cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters) == (1e-3, 1e-4, 100, 2000)
    assert (cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.grad_clip) == (0.9, 0.99, 1e-8, 0.1, 1.0)
    for f in dataclasses.fields(OptimConfig):
        assert isinstance(f.metadata.get("help"), str) and f.metadata["help"], f.name
