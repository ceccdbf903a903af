"""minillm's GPT written with PyTorch operations, for the reference tests and the benchmarks.

The parameters are a dict of torch tensors with exactly minillm's names and shapes (linear
weights (in, out), as GPT-2 stores them), so a gradient from torch autograd compares with
minillm's by name. minillm itself never imports torch.

    params = params_from_minillm(model, dtype=torch.float64)      # leaf tensors, requires_grad
    logits, loss = gpt_forward(params, idx, targets, model.config)
    loss.backward()                                               # params[name].grad
"""
import numpy as np
import torch
import torch.nn.functional as F


def params_from_minillm(model, dtype=None):
    """minillm's params as torch leaf tensors that require gradients (copies)."""
    return {name: torch.tensor(np.array(p), dtype=dtype).requires_grad_()
            for name, p in model.params.items()}


def sinusoidal(T, C, dtype):
    """The fixed positions of minillm.core.layers.sinusoidal_encoding, in torch."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, C, 2, dtype=torch.float64) / C)
    pe = torch.empty(T, C, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * inv_freq), torch.cos(pos * inv_freq)
    return pe.to(dtype)


def gpt_forward(p, idx, targets, config):
    """GPT-2's forward pass from a dict of tensors named like minillm's params.

    idx, targets: int tensors (B, T) (targets -1 = ignored, or None) -> logits (B, T, V), loss.
    """
    B, T = idx.shape
    C, nh = config.n_embd, config.n_head
    x = p["wte.weight"][idx]
    if config.pos_encoding == "learned":
        x = x + p["wpe.weight"][:T]
    else:
        x = x + sinusoidal(T, C, x.dtype)
    for i in range(config.n_layer):
        h = lambda name: p[f"h.{i}.{name}"]  # noqa: E731
        a = F.layer_norm(x, (C,), h("ln_1.weight"), h("ln_1.bias"), eps=1e-5)
        q, k, v = (a @ h("attn.c_attn.weight") + h("attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # softmax(q k^T/sqrt(hs)) v
        y = y.transpose(1, 2).reshape(B, T, C)
        x = x + y @ h("attn.c_proj.weight") + h("attn.c_proj.bias")
        m = F.layer_norm(x, (C,), h("ln_2.weight"), h("ln_2.bias"), eps=1e-5)
        m = F.gelu(m @ h("mlp.c_fc.weight") + h("mlp.c_fc.bias"), approximate="tanh")
        x = x + m @ h("mlp.c_proj.weight") + h("mlp.c_proj.bias")
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    logits = x @ p["wte.weight"].T                                  # tied LM head
    if targets is None:
        return logits, None
    loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1), ignore_index=-1)
    return logits, loss


def adamw(params, optim_config):
    """torch's AdamW with decay on 2-D tensors only, as minillm (and nanoGPT) do."""
    decay = [t for t in params.values() if t.dim() >= 2]
    rest = [t for t in params.values() if t.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim_config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=optim_config.learning_rate,
                             betas=(optim_config.beta1, optim_config.beta2), eps=optim_config.eps)
