"""minillm against PyTorch autograd: same weights in float64, same logits, loss and gradients.

The reference below is a plain functional GPT-2 written with torch operations; autograd then
differentiates it. Skipped when torch is not installed.
"""
import math

import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.layers import sinusoidal_encoding

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_gpt_loss(p, idx, targets, cfg):
    """GPT-2 forward in torch from a dict of float64 tensors named like minillm's params."""
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    x = p["wte.weight"][idx]
    if cfg.pos_encoding == "learned":
        x = x + p["wpe.weight"][:T]
    else:
        x = x + torch.from_numpy(sinusoidal_encoding(T, C, np.float64))
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg.n_layer):
        h = lambda name: p[f"h.{i}.{name}"]  # noqa: E731
        a = F.layer_norm(x, (C,), h("ln_1.weight"), h("ln_1.bias"), eps=1e-5)
        q, k, v = (a @ h("attn.c_attn.weight") + h("attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ h("attn.c_proj.weight") + h("attn.c_proj.bias")
        m = F.layer_norm(x, (C,), h("ln_2.weight"), h("ln_2.bias"), eps=1e-5)
        m = F.gelu(m @ h("mlp.c_fc.weight") + h("mlp.c_fc.bias"), approximate="tanh")
        x = x + m @ h("mlp.c_proj.weight") + h("mlp.c_proj.bias")
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    logits = x @ p["wte.weight"].T
    loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1), ignore_index=-1)
    return logits, loss


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_logits_loss_and_every_gradient_match_torch(pos_encoding):
    cfg = GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=4, n_embd=16,
                    pos_encoding=pos_encoding, dtype="float64")
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    for p in model.params.values():
        p += rng.normal(scale=0.2, size=p.shape)
    idx = rng.integers(0, 23, size=(3, 12))
    targets = rng.integers(0, 23, size=(3, 12))
    targets[1, :4] = -1

    loss, grads = model.loss_and_grads(idx, targets)
    logits = model.forward(idx)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    t_logits, t_loss = torch_gpt_loss(tp, torch.from_numpy(idx), torch.from_numpy(targets), cfg)
    t_loss.backward()

    assert np.allclose(logits, t_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for name, g in grads.items():
        ref = tp[name].grad.numpy()
        err = np.abs(g - ref).max() / max(np.abs(ref).max(), 1e-30)
        assert err < 1e-9, f"{name}: {err:.2e}"
