"""Text generation: one token at a time, with greedy, temperature, top-k and top-p sampling.

The next token is drawn from softmax(logits / temperature) over the last position's logits
(V,), after keeping only
  * top-k: the k most likely tokens, and/or
  * top-p (nucleus): the smallest set of most likely tokens whose probabilities add up to p.
Greedy decoding takes the single most likely token.

KV cache. Without it, every new token reruns the whole context through the model. With it, the
keys and values of earlier positions are kept, and each step feeds only the newest token (T = 1).
Once the context is longer than block_size the window slides by one token per step. With
absolute positions (learned or sinusoidal) every position then shifts and the cached keys no
longer hold, so by default each step recomputes the window of the last block_size tokens,
exactly what generation without the cache does: both give the same tokens. Only the last
position's logits are needed, so the last block runs its query, MLP and head for that one
position (``last_only``), and the cache is dropped (it would be rebuilt at every step).

Rolling (``rolling=True``, rotary positions only). A rotary key carries its own position and a
score depends only on the distance between query and key, so the cache can keep the keys and
values of the last block_size - 1 positions and go on one token per step (``RollingKVCache``).
That is faster but not the same model of the window: in every layer after the first, a cached
key was computed from hidden states that attended to tokens which have since left the window,
whereas recomputing sees only the window. The next-token distributions drift a little apart
(measured by ``benchmarks/bench_rolling_cache.py``); exact recomputation stays the default.

Shape legend: T time, V vocabulary.
"""
import math

import numpy as np

from .layers import softmax_forward

NUMBERS = (int, float, np.integer, np.floating)


def sample_next(logits, *, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None):
    """Choose the next token id from one row of logits (V,).

    Computed in float64. The draw uses one uniform number u from ``rng`` and picks the token
    where the cumulative probability passes u, so a seeded rng gives a reproducible choice.

    >>> sample_next(np.array([0.1, 2.0, -1.0]), greedy=True)
    1
    """
    logits = np.asarray(logits, dtype=np.float64)
    if np.isnan(logits).any() or np.isposinf(logits).any() or np.isneginf(logits).all():
        raise ValueError("the logits are not numbers (NaN, +inf, or all -inf): the model "
                         "computed non-finite values (are its weights damaged?)")
    if not (isinstance(temperature, NUMBERS) and math.isfinite(temperature)) \
            or temperature < 0.0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if greedy or temperature == 0.0:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("sampling needs an rng (np.random.default_rng(seed)); or use greedy")
    with np.errstate(over="ignore"):
        z = logits / temperature
    if np.isposinf(z).any():
        raise ValueError(f"temperature {temperature!r} is so small that logits / temperature "
                         "overflow; use temperature 0 (greedy) for the most likely token")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if top_k < z.size:
            kth = np.partition(z, -top_k)[-top_k]          # the k-th largest logit
            z = np.where(z < kth, -np.inf, z)
    probs, _ = softmax_forward(z)
    if top_p is not None:
        if not (isinstance(top_p, NUMBERS) and 0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = np.argsort(-probs, kind="stable")          # most likely first
        before = np.cumsum(probs[order]) - probs[order]    # probability mass ranked above each
        dropped = order[before >= top_p]                   # the nucleus is already complete
        probs[dropped] = 0.0
        probs /= probs.sum()
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


def generate(model, prompt_ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
             greedy=False, rng=None, use_cache=True, rolling=False):
    """Yield ``max_new_tokens`` new token ids, one at a time, continuing ``prompt_ids``.

    prompt_ids: list or 1-D int array of length 1 .. block_size. ``rolling``: past block_size,
    roll the KV cache instead of recomputing the window (rotary positions only; see above).
    A generator, so callers can print each token as it comes:

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    >>> len(list(generate(model, [0, 1], 6, greedy=True)))
    6
    """
    block_size = model.config.block_size
    prompt = np.asarray(prompt_ids)
    if prompt.size == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if prompt.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got {prompt.dtype} {prompt_ids!r:.40}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    context = [int(t) for t in prompt.reshape(-1)]
    damaged = [name for name, p in getattr(model, "params", {}).items() if not np.isfinite(p).all()]
    if damaged:
        raise ValueError(f"the model's weights hold NaN or infinity ({', '.join(damaged[:4])}"
                         f"{' ...' if len(damaged) > 4 else ''}), so it cannot give probabilities")
    if len(context) > block_size:
        raise ValueError(f"the prompt is {len(context)} tokens long, longer than the model's "
                         f"context of block_size={block_size}")
    if rolling and not use_cache:
        raise ValueError("a rolling KV cache needs the KV cache (use_cache=True)")
    kv_cache = model.new_kv_cache(rolling=rolling) if use_cache else None
    logits = model.forward(np.array([context]), kv_cache=kv_cache, last_only=True)[0, -1]
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                            greedy=greedy, rng=rng)
        yield token
        if step == max_new_tokens - 1:
            return                                           # no logits needed after the last
        context.append(token)
        if kv_cache is not None and (rolling or kv_cache.length < block_size):
            logits = model.forward(np.array([[token]]), kv_cache=kv_cache)[0, -1]   # 1 new position
        else:
            window = np.array([context[-block_size:]])                             # (1, T)
            kv_cache = None                  # positions shift at every step from here on
            logits = model.forward(window, last_only=True)[0, -1]
