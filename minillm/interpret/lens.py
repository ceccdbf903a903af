"""The residual stream and the logit lens (nostalgebraist 2020).

The residual stream is the sum every block adds to: x_0 = the embeddings (tokens, and positions
when they are added), x_{l+1} = block_l(x_l). The model's prediction reads only the last one,

    logits = ln_f(x_L) @ wte^T.

The logit lens reads every x_l the same way, ln_f(x_l) @ wte^T, to see what the model would
predict if it stopped after block l - 1 (l = 0: after the embeddings alone).

Shape legend: L layers (n_layer), B batch, T time, C channels, V vocabulary.
"""
import numpy as np

from ..core.block import norm_forward
from ..core.model import lm_head_forward


def residual_stream(model, idx):
    """The residual stream after the embeddings and after every block: (L + 1, B, T, C).

    Read from one forward pass (evaluation mode): block l's input is kept by its first norm
    (``cache.h[l].ln_1.x``), the last block's output by ``ln_f``.

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    >>> residual_stream(model, np.array([[1, 2, 3]])).shape
    (3, 1, 3, 8)
    """
    _, cache = model.forward_with_cache(idx)
    return np.stack([block.ln_1.x for block in cache.h] + [cache.ln_f.x])


def logit_lens(model, idx):
    """ln_f(x_l) @ wte^T for l = 0 (after the embeddings) .. L (after the last block):
    (L + 1, B, T, V). The last one is the model's own logits.

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    >>> idx = np.array([[1, 2, 3]])
    >>> lens = logit_lens(model, idx)
    >>> lens.shape, bool(np.allclose(lens[-1], model.forward(idx), atol=1e-6))
    ((3, 1, 3, 11), True)
    """
    p, config = model.params, model.config
    xs = residual_stream(model, idx)                                   # (L+1, B, T, C)
    L1, B, T, C = xs.shape
    h, _ = norm_forward(xs, p["ln_f.weight"], p.get("ln_f.bias"), config)
    logits, _ = lm_head_forward(h.reshape(L1 * B, T, C), model.head_weight())
    return logits.reshape(L1, B, T, -1)                                # (L+1, B, T, V)
