"""Exercises of notebook 09: generation (minillm/core/sampling.py, attention.py).

    sample_next            sample_next(logits, *, temperature, top_k, top_p, greedy, rng)
    mha_forward_kv_cache   mha_forward(..., kv_cache=..., layer=...)   one KV-cache decode step
    generate               generate(model, prompt_ids, max_new_tokens, ...)   the whole loop

(Multi-head attention and learned positions, as in notebook 09: the cases have as many key/value
heads as query heads, and generate recomputes the window; the rolling cache of rotary
positions, ``rolling=True``, is notebook 16's.)

A sampler is checked by its choices for 200 seeded draws (rng.random() is drawn once per
token), so a filter that keeps a wrong set of tokens shows up as draws that differ.
Shape legend: B batch, T new positions, S positions so far, C channels, nh heads, hs head size.

>>> from minillm.exercises import check
>>> check("sample_next", sampling.sample_next, verbose=False).passed
True
"""
import numpy as np

from ..core import attention, layers, model, sampling
from ..core.config import GPTConfig
from .running import BadReturn, invoke
from .registry import Case, exercise, mistake

DRAWS = 200


# ----------------------------------------------------------------------------------------------
# Temperature, top-k, top-p
# ----------------------------------------------------------------------------------------------

def _sample_cases(rng):
    logits = np.array([2.0, 1.0, 0.5, 0.2, 0.0, -0.5, -1.0, -3.0]) + rng.normal(size=8) * 0.1
    logits = logits[rng.permutation(8)]                     # the best token is not id 0
    return [Case("temperature 1", dict(logits=logits)),
            Case("temperature 0.5 (sharper)", dict(logits=logits, temperature=0.5)),
            Case("temperature 2 (flatter)", dict(logits=logits, temperature=2.0)),
            Case("top-k 3", dict(logits=logits, top_k=3)),
            Case("top-p 0.7", dict(logits=logits, top_p=0.7)),
            Case("top-k 3, then top-p 0.7", dict(logits=logits, top_k=3, top_p=0.7)),
            Case("top-k 8 = V: nothing removed", dict(logits=logits, top_k=8)),
            Case("greedy", dict(logits=logits, greedy=True)),
            Case("temperature 0 is greedy", dict(logits=logits, temperature=0.0))]


def _run_sample(fn, inputs):
    tokens = []
    for seed in range(DRAWS):
        token = invoke(sampling.sample_next, fn, {**inputs, "rng": np.random.default_rng(seed)})
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool):
            raise BadReturn(f"sample_next must return a token id (an int), got "
                            f"{type(token).__name__}")
        tokens.append(int(token))
    return np.array(tokens)


exercise("sample_next", "the next token from logits: temperature, top-k, top-p, greedy",
         reference=sampling.sample_next, returns=("tokens",), run=_run_sample,
         cases=_sample_cases, float32=False)


def _sample(logits, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None,
            times=False, k_extra=0, crossing=True, p_first=False, zero_greedy=True):
    logits = np.asarray(logits, dtype=np.float64)
    if greedy or (temperature == 0.0 and zero_greedy):
        return int(np.argmax(logits))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = logits * temperature if times else logits / temperature

        def top_k_filter(z):
            if top_k is not None and top_k < z.size:
                kth = np.sort(z)[-top_k - k_extra]
                return np.where(z < kth, -np.inf, z)
            return z

        def top_p_filter(probs):
            if top_p is None:
                return probs
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            before = cum - probs[order] if crossing else cum
            probs = probs.copy()
            probs[order[before >= top_p]] = 0.0
            return probs / probs.sum()
        if p_first:
            probs = top_p_filter(layers.softmax_forward(z)[0])
            with np.errstate(divide="ignore"):
                probs = layers.softmax_forward(top_k_filter(np.log(probs)))[0]
        else:
            probs = top_p_filter(layers.softmax_forward(top_k_filter(z))[0])
        cdf = np.cumsum(probs)
        u = rng.random() * cdf[-1]
        return int(min(np.searchsorted(cdf, u, side="right"), probs.size - 1))


@mistake("sample_next", "divide the logits by the temperature: a temperature below 1 sharpens "
                        "the distribution")
def _(logits, *, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None):
    return _sample(logits, temperature, top_k, top_p, greedy, rng, times=True)


@mistake("sample_next", "top-k keeps exactly the k largest logits: the threshold is the k-th "
                        "largest, np.partition(z, -k)[-k]")
def _(logits, *, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None):
    return _sample(logits, temperature, top_k, top_p, greedy, rng, k_extra=1)


@mistake("sample_next", "top-p keeps the token that crosses p: drop a token only when the mass "
                        "ranked above it already reaches top_p")
def _(logits, *, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None):
    return _sample(logits, temperature, top_k, top_p, greedy, rng, crossing=False)


@mistake("sample_next", "top-k first, then top-p on what is left (renormalised)")
def _(logits, *, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None):
    return _sample(logits, temperature, top_k, top_p, greedy, rng, p_first=True)


@mistake("sample_next", "temperature 0 means greedy: return the argmax (dividing by 0 gives "
                        "inf and NaN)")
def _(logits, *, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None):
    return _sample(logits, temperature, top_k, top_p, greedy, rng, zero_greedy=False)


# ----------------------------------------------------------------------------------------------
# One KV-cache decode step
# ----------------------------------------------------------------------------------------------

def _kv_cases(rng):
    def case(label, B, T, C, nh, cached, max_T=8, layer=1):
        kv = attention.KVCache(n_layer=2, B=B, n_kv_head=nh, max_T=max_T, head_size=C // nh,
                               dtype=np.float64)
        kv.k[:, :, :, :cached] = rng.normal(size=(2, B, nh, cached, C // nh))
        kv.v[:, :, :, :cached] = rng.normal(size=(2, B, nh, cached, C // nh))
        kv.length = cached
        return Case(label, dict(x=rng.normal(size=(B, T, C)),
                                c_attn_w=rng.normal(size=(C, 3 * C)) * 0.5,
                                c_attn_b=rng.normal(size=3 * C) * 0.5,
                                c_proj_w=rng.normal(size=(C, C)) * 0.5,
                                c_proj_b=rng.normal(size=C), n_head=nh, kv_cache=kv,
                                layer=layer))
    return [case("one decode step: T = 1 after 4 cached positions", 1, 1, 8, 2, 4),
            case("prefill: T = 3 into an empty cache, layer 0", 1, 3, 8, 2, 0, layer=0),
            case("B = 2, 2 new positions after 3", 2, 2, 6, 3, 3),
            case("the last free slot", 1, 1, 4, 2, 4, max_T=5)]


def _run_decode(fn, inputs):
    ret = invoke(attention.mha_forward, fn, inputs)
    if not isinstance(ret, tuple) or len(ret) != 2:
        raise BadReturn("mha_forward must return 2 values (out, cache)")
    kv = inputs["kv_cache"]
    return ret[0], kv.k, kv.v, kv.length


exercise("mha_forward_kv_cache", "one decode step: append the new keys and values, attend over "
         "all of them", reference=attention.mha_forward, run=_run_decode,
         returns=("out", "kv_cache.k", "kv_cache.v", "kv_cache.length"), cases=_kv_cases)


def _decode(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, kv_cache, layer, append=True,
            at=None, which=None, advance=False):
    B, T, C = x.shape
    hs = C // n_head
    qkv, _ = layers.linear_forward(x, c_attn_w, c_attn_b)
    qkv = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if append:
        start = kv_cache.length if at is None else at
        slot = layer if which is None else which
        kv_cache.k[slot, :, :, start:start + T] = k
        kv_cache.v[slot, :, :, start:start + T] = v
        k = kv_cache.k[slot, :, :, :kv_cache.length + T]
        v = kv_cache.v[slot, :, :, :kv_cache.length + T]
    if advance:
        kv_cache.length += T
    y, _ = attention.sdpa_forward(q, k, v, causal=True)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    return layers.linear_forward(y, c_proj_w, c_proj_b)[0], None


@mistake("mha_forward_kv_cache", "attend over all the keys so far: k, v = kv_cache.append(layer,"
                                 " k, v), then attention over (B, nh, S, hs)")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _decode(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, kv_cache, layer,
                   append=False)


@mistake("mha_forward_kv_cache", "the new positions go after the kv_cache.length held already, "
                                 "not at position 0")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _decode(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, kv_cache, layer, at=0)


@mistake("mha_forward_kv_cache", "each layer has its own slot in the cache: kv_cache.k[layer]")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _decode(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, kv_cache, layer, which=0)


@mistake("mha_forward_kv_cache", "mha_forward only appends: the model advances kv_cache.length "
                                 "once, after every layer has appended")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _decode(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, kv_cache, layer,
                   advance=True)


# ----------------------------------------------------------------------------------------------
# The generation loop
# ----------------------------------------------------------------------------------------------

def _generate_cases(rng):
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    m = model.GPT(config, seed=int(rng.integers(1000)))
    for p in m.params.values():                        # beyond the init's 0.02: varied tokens
        p += (rng.normal(size=p.shape) * 0.5).astype(p.dtype)

    def case(label, prompt, n, **options):
        return Case(label, dict(model=m, prompt_ids=prompt, max_new_tokens=n, **options))
    return [case("greedy, with the KV cache", [1, 2, 3], 4, greedy=True),
            case("sampled: temperature 0.8, top-k 5", [4], 6, temperature=0.8, top_k=5,
                 rng=np.random.default_rng(7)),
            case("past block_size: the window slides", [1, 5, 2, 7, 3, 9], 7, greedy=True),
            case("without the KV cache", [2, 6], 8, temperature=1.2,
                 rng=np.random.default_rng(8), use_cache=False),
            case("one new token", [3, 3], 1, greedy=True),
            case("a prompt of block_size tokens", [1, 2, 3, 4, 5, 6, 7, 8], 3, greedy=True)]


def _run_generate(fn, inputs):
    out = invoke(sampling.generate, fn, inputs)
    return [int(t) for t in out]


exercise("generate", "the generation loop: the KV cache, one token at a time, the window "
         "sliding past block_size", reference=sampling.generate, returns=("tokens",),
         run=_run_generate, cases=_generate_cases, float32=False, timeout=10.0)


def _generate(model, prompt_ids, max_new_tokens, options, slide=True, reset=True, extra=0):
    block_size = model.config.block_size
    context = [int(t) for t in prompt_ids]
    use_cache = options.pop("use_cache", True)
    kv = model.new_kv_cache() if use_cache else None
    logits = model.forward(np.array([context]), kv_cache=kv, last_only=True)[0, -1]
    for step in range(max_new_tokens + extra):
        token = sampling.sample_next(logits, **options)
        yield token
        context.append(token)
        if kv is not None and kv.length < block_size:
            logits = model.forward(np.array([[token]]), kv_cache=kv)[0, -1]
        else:
            window = context[-block_size:] if slide else context
            if kv is not None and reset:
                kv.length = 0
            logits = model.forward(np.array([window]), kv_cache=kv, last_only=True)[0, -1]


@mistake("generate", "past block_size the model reads only the last block_size tokens: "
                     "window = context[-block_size:]")
def _(model, prompt_ids, max_new_tokens, *, use_cache=True, **options):
    return _generate(model, prompt_ids, max_new_tokens, dict(options, use_cache=use_cache),
                     slide=False)


@mistake("generate", "when the window slides every position shifts: reset kv_cache.length = 0 "
                     "and run the whole window again")
def _(model, prompt_ids, max_new_tokens, *, use_cache=True, **options):
    return _generate(model, prompt_ids, max_new_tokens, dict(options, use_cache=use_cache),
                     reset=False)


@mistake("generate", "yield exactly max_new_tokens tokens")
def _(model, prompt_ids, max_new_tokens, *, use_cache=True, **options):
    return _generate(model, prompt_ids, max_new_tokens, dict(options, use_cache=use_cache),
                     extra=1)
