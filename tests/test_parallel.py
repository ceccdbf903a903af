"""Data parallelism and gradient accumulation (minillm/training/parallel.py): the gradient of a
sum is the sum of the gradients, so a batch split over threads gives the one-thread step."""
import warnings

import numpy as np
import pytest

from minillm import GPT, GPTConfig, AdamW, clip_grad_norm
from minillm.core.gradcheck import rel_error
from minillm.training.parallel import DataParallel, kept_targets, one_blas_thread, weighted_sum


def model(dtype="float64", dropout=0.0):
    m = GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16, dtype=dtype,
                      dropout=dropout), seed=0)
    rng = np.random.default_rng(1)
    for p in m.params.values():
        p += rng.normal(scale=0.2, size=p.shape).astype(p.dtype)
    return m


def batch(B=5, T=8, seed=2):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 17, size=(B, T)), rng.integers(0, 17, size=(B, T))
    y[0, :5] = -1                                      # shards with different kept counts
    y[3, 2] = -1
    return x, y


@pytest.mark.parametrize("workers", [2, 3])
def test_the_split_batch_gives_the_one_thread_gradient(workers):
    m = model()
    x, y = batch()
    loss, grads = m.loss_and_grads(x, y, train=False)
    with one_blas_thread():
        dp_loss, dp_grads = DataParallel(m, workers).loss_and_grads(x, y, train=False)
    assert dp_loss == pytest.approx(loss, rel=1e-12)
    assert list(dp_grads) == list(grads)
    for name, g in grads.items():
        assert rel_error(dp_grads[name], g) < 1e-12, name


def test_float32_within_rounding_and_bit_identical_for_fixed_workers():
    m = model("float32", dropout=0.1)
    x, y = batch(B=12)
    runs = []
    for _ in range(2):
        loss, grads = DataParallel(m, 2).loss_and_grads(x, y, rng=np.random.default_rng(0))
        runs.append((loss, grads))
        assert all(g.dtype == np.float32 for g in grads.values())
    (a_loss, a), (b_loss, b) = runs
    assert a_loss == b_loss and all(np.array_equal(a[k], b[k]) for k in a)   # reproducible
    eval_dp = DataParallel(m, 2).loss(x, y)
    assert eval_dp == pytest.approx(m.loss(x, y), rel=1e-6)
    m.config.dropout = 0.0                     # without dropout: equal to the serial step
    loss, grads = m.loss_and_grads(x, y)
    dp_loss, dp_grads = DataParallel(m, 2).loss_and_grads(x, y)
    assert dp_loss == pytest.approx(loss, rel=1e-6)
    assert max(rel_error(dp_grads[k], grads[k]) for k in grads) < 1e-5


def test_gradient_accumulation_equals_one_big_batch():
    m = model()
    (x1, y1), (x2, y2) = batch(seed=3), batch(seed=4)
    shards = [(*m.loss_and_grads(x, y, train=False), kept_targets(y)) for x, y in
              ((x1, y1), (x2, y2))]
    loss, grads = weighted_sum(shards)
    big_loss, big = m.loss_and_grads(np.concatenate([x1, x2]), np.concatenate([y1, y2]),
                                     train=False)
    assert loss == pytest.approx(big_loss, rel=1e-12)
    assert max(rel_error(grads[k], big[k]) for k in big) < 1e-12


def test_the_optimizer_and_clipping_share_their_keys_out_over_the_threads():
    m1, m2 = model(), model()
    x, y = batch()
    dp = DataParallel(m2, 2)
    groups = dp.groups(tuple(m2.params))
    assert sorted(k for g in groups for k in g) == sorted(m2.params)
    sizes = [sum(m2.params[k].size for k in g) for g in groups]
    assert max(sizes) < 0.6 * sum(sizes)                               # balanced
    for m, run in ((m1, None), (m2, dp.run)):
        opt = AdamW(m.params, lr=1e-2)
        for _ in range(3):
            _, grads = m.loss_and_grads(x, y, train=False)
            clip_grad_norm(grads, 0.5, run=run)
            opt.step(grads, run=run)
    # The norm's partial sums are added in another order (rounding). The keys' third of
    # c_attn.bias has a gradient of exactly zero plus rounding, which Adam's division by
    # sqrt(v) turns into steps of either sign: it is left out.
    for k in m1.params:
        if not k.endswith("c_attn.bias"):
            np.testing.assert_allclose(m1.params[k], m2.params[k], rtol=1e-9, atol=1e-12)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        DataParallel(model(), 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_threads_keep_the_callers_floating_point_error_handling(workers):
    """np.errstate is not inherited by threads: DataParallel passes it on, so an overflow the
    caller checks for itself stays quiet, and one it asks to raise does raise."""
    m = model()
    m.params["h.0.mlp.c_fc.weight"][...] = 1e300          # float64 overflow in the MLP
    x, y = batch()
    dp = DataParallel(m, workers=workers)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        dp.loss_and_grads(x, y, train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            dp.loss_and_grads(x, y, train=False)
