"""minillm against PyTorch autograd: same weights in float64, same logits, loss and gradients.

The reference is ``reference/torch_gpt.py``, a plain functional GPT-2 written with torch
operations on a dict of tensors named like minillm's; autograd differentiates it. Skipped when
torch is not installed.
"""
import numpy as np
import pytest

from minillm import GPT, GPTConfig

torch = pytest.importorskip("torch")
from torch_gpt import gpt_forward, params_from_minillm  # noqa: E402  (reference/, see conftest)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_logits_loss_and_every_gradient_match_torch(pos_encoding):
    config = GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=4, n_embd=16,
                       pos_encoding=pos_encoding, dtype="float64")
    model = GPT(config, seed=0)
    rng = np.random.default_rng(0)
    for p in model.params.values():
        p += rng.normal(scale=0.2, size=p.shape)
    idx = rng.integers(0, 23, size=(3, 12))
    targets = rng.integers(0, 23, size=(3, 12))
    targets[1, :4] = -1

    loss, grads = model.loss_and_grads(idx, targets)
    logits = model.forward(idx)

    tp = params_from_minillm(model, dtype=torch.float64)
    t_logits, t_loss = gpt_forward(tp, torch.from_numpy(idx), torch.from_numpy(targets), config)
    t_loss.backward()

    assert np.allclose(logits, t_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for name, g in grads.items():
        ref = tp[name].grad.numpy()
        err = np.abs(g - ref).max() / max(np.abs(ref).max(), 1e-30)
        assert err < 1e-9, f"{name}: {err:.2e}"
