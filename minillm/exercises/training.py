"""Exercises of notebook 08: what one training step needs (data.py, layers.py, model.py).

    get_batch               get_batch(data, block_size, batch_size, rng)   inputs and targets
    cross_entropy_forward   cross_entropy_forward(logits, targets, ignore_index=-1)
    dropout_forward         dropout_forward(x, p, *, rng, train, mask)     inverted dropout
    lm_head_backward        lm_head_backward(dlogits, cache)               logits = x @ wte^T
    gpt_backward            GPT.backward(self, dout, cache)   the model's backward, tied wte
                            (GPT-2's configuration: LayerNorm, GELU, tied head)

The random draws are part of the contract: with the same rng the student's batch (or dropout
mask) must be minillm's, so the docstrings say exactly which numbers are drawn.
Shape legend: B batch, T time, C channels, V vocabulary size, N tokens of data.

>>> from minillm.exercises import check
>>> check("get_batch", data.get_batch, verbose=False).passed
True
"""
import numpy as np

from ..core import layers, model
from ..core.config import GPTConfig
from ..training import data
from .registry import Case, exercise, mistake


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------

def _batch_cases(rng):
    def case(label, N, block_size, batch_size, dtype=np.int64, seed=0):
        return Case(label, dict(data=rng.integers(0, 50, size=N).astype(dtype),
                                block_size=block_size, batch_size=batch_size,
                                rng=np.random.default_rng(seed)))
    return [case("T = 8, B = 4", 200, 8, 4),
            case("block_size 1", 30, 1, 5, seed=1),
            case("exactly T + 1 tokens: one window", 9, 8, 3, seed=2),
            case("uint16 ids in (as in a .bin file), int64 out", 100, 6, 2, np.uint16, 3)]


exercise("get_batch", "a random batch of windows x and their next tokens y",
         reference=data.get_batch, returns=("x", "y"), cases=_batch_cases, float32=False)


def _batch(data, block_size, batch_size, rng, high=0, shift=1, cast=True, one_start=False):
    N, T = len(data), block_size
    ix = rng.integers(0, N - T + high, size=None if one_start else batch_size)
    rows = np.asarray(ix).reshape(-1, 1) + np.arange(T)
    rows = np.broadcast_to(rows, (batch_size, T))
    x, y = data[rows], data[np.clip(rows + shift, 0, N - 1)]
    return (x.astype(np.int64), y.astype(np.int64)) if cast else (x, y)


@mistake("get_batch", "y is x shifted left by one token, y[b, t] = data[ix[b] + t + 1]: the "
                      "target of each position is the token after it")
def _(data, block_size, batch_size, rng):
    return _batch(data, block_size, batch_size, rng, shift=0)


@mistake("get_batch", "the target is the next token, data[i + 1], not the previous one")
def _(data, block_size, batch_size, rng):
    return _batch(data, block_size, batch_size, rng, shift=-1)


@mistake("get_batch", "x and y are int64 whatever the data's dtype (the ids index embeddings "
                      "and are compared with -1)")
def _(data, block_size, batch_size, rng):
    return _batch(data, block_size, batch_size, rng, cast=False)


@mistake("get_batch", "draw one start per row: rng.integers(0, N - T, size=batch_size)")
def _(data, block_size, batch_size, rng):
    return _batch(data, block_size, batch_size, rng, one_start=True)


@mistake("get_batch", "a window starting at N - T has no token after it: the starts are "
                      "rng.integers(0, N - T), whose upper end is excluded")
def _(data, block_size, batch_size, rng):
    return _batch(data, block_size, batch_size, rng, high=1)


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------

def _ce_cases(rng):
    def case(label, B, T, V, ignored=(), shift=0.0, **extra):
        targets = rng.integers(0, V, size=(B, T))
        targets.reshape(-1)[list(ignored)] = extra.get("ignore_index", -1)
        return Case(label, dict(logits=rng.normal(size=(B, T, V)) * 2.0 + shift,
                                targets=targets, **extra))
    return [case("(B, T, V), every target kept", 2, 3, 5),
            case("ignored targets (-1)", 2, 4, 6, ignored=(1, 2, 6)),
            case("T = 1, B = 1", 1, 1, 4),
            case("logits around 800 (exp overflows)", 2, 2, 5, shift=800.0),
            case("ignore_index = 0", 1, 6, 4, ignored=(0, 3), ignore_index=0)]


exercise("cross_entropy_forward", "the mean negative log-likelihood of the kept targets",
         reference=layers.cross_entropy_forward, returns=("loss", "cache"), compare=("loss",),
         cases=_ce_cases)


def _ce(logits, targets, ignore_index=-1, mean_all=False, drop=True, stable=True):
    V = logits.shape[-1]
    z, t = logits.reshape(-1, V), targets.reshape(-1)
    keep = t != ignore_index if drop else np.ones(t.shape, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if stable:
            z = z - z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    nll = -logp[np.arange(t.size), np.where(keep, t, 0) if drop else t]
    return float(nll[keep].sum()) / (t.size if mean_all else int(keep.sum())), None


@mistake("cross_entropy_forward", "the mean runs over the n kept positions, not over all "
                                  "B * T of them")
def _(logits, targets, ignore_index=-1):
    return _ce(logits, targets, ignore_index, mean_all=True)


@mistake("cross_entropy_forward", "positions whose target is ignore_index (-1 by default) "
                                  "are left out of the loss; as an index, -1 would pick the "
                                  "last class")
def _(logits, targets, ignore_index=-1):
    return _ce(logits, targets, ignore_index, drop=False)


@mistake("cross_entropy_forward", "compute log softmax stably: subtract the row maximum first "
                                  "(exp(800) overflows)")
def _(logits, targets, ignore_index=-1):
    return _ce(logits, targets, ignore_index, stable=False)




# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------

def _dropout_cases(rng):
    x = rng.normal(size=(2, 3, 4))
    return [Case("p = 0.5, training", dict(x=x, p=0.5, rng=np.random.default_rng(0))),
            Case("T = 1, p = 0.25", dict(x=rng.normal(size=(1, 1, 8)), p=0.25,
                                         rng=np.random.default_rng(1))),
            Case("evaluation (train=False): the identity", dict(
                x=x, p=0.5, rng=np.random.default_rng(2), train=False)),
            Case("p = 0: the identity", dict(x=x, p=0.0, rng=np.random.default_rng(3))),
            Case("a given mask is replayed", dict(
                x=x, p=0.5, mask=(rng.random(x.shape) >= 0.5) * 2.0))]


exercise("dropout_forward", "inverted dropout: drop with probability p, scale the rest by "
         "1 / (1 - p)", reference=layers.dropout_forward, returns=("out", "cache"),
         compare=("out",), cases=_dropout_cases)


def _dropout(x, p, rng, train, mask, scale=True, keep_above=True, in_eval=False,
             use_mask=True):
    if mask is None or not use_mask:
        if (not train and not in_eval) or p == 0.0:
            return x, None
        u = (rng or np.random.default_rng(0)).random(x.shape, dtype=np.float32)
        keep = u >= p if keep_above else u < p
        mask = keep.astype(x.dtype) * (1.0 / (1.0 - p) if scale else 1.0)
    return x * mask, None


@mistake("dropout_forward", "inverted dropout scales the kept values by 1 / (1 - p), so that "
                            "evaluation needs no rescaling")
def _(x, p, *, rng=None, train=True, mask=None):
    return _dropout(x, p, rng, train, mask, scale=False)


@mistake("dropout_forward", "p is the probability of dropping: keep where rng.random(...) >= p")
def _(x, p, *, rng=None, train=True, mask=None):
    return _dropout(x, p, rng, train, mask, keep_above=False)


@mistake("dropout_forward", "in evaluation (train=False) dropout is the identity")
def _(x, p, *, rng=None, train=True, mask=None):
    return _dropout(x, p, rng, train, mask, in_eval=True)


@mistake("dropout_forward", "a given mask is replayed as it is (gradient checks rely on it)")
def _(x, p, *, rng=None, train=True, mask=None):
    return _dropout(x, p, rng, train, mask, use_mask=False)


# ----------------------------------------------------------------------------------------------
# The tied output layer, and the whole model's backward
# ----------------------------------------------------------------------------------------------

def _head_cases(rng):
    def case(label, B, T, C, V):
        return Case(label, dict(x=rng.normal(size=(B, T, C)), wte=rng.normal(size=(V, C))))
    return [case("B = 2, T = 3, C = 4, V = 7", 2, 3, 4, 7),
            case("T = 1, B = 1", 1, 1, 5, 3),
            case("V < C", 2, 2, 6, 4)]


exercise("lm_head_backward", "the output layer tied to the embedding: logits = x @ wte^T",
         reference=model.lm_head_backward, forward=model.lm_head_forward,
         returns=("dx", "dwte"), cases=_head_cases)


@mistake("lm_head_backward", "dwte has wte's shape (V, C): dwte = dlogits^T @ x")
def _(dlogits, cache):
    B, T, C = cache.x.shape
    dl = dlogits.reshape(B * T, -1)
    return (dl @ cache.wte).reshape(B, T, C), cache.x.reshape(B * T, C).T @ dl


@mistake("lm_head_backward", "logits = x @ wte^T, so dx = dlogits @ wte (not wte^T)")
def _(dlogits, cache):
    B, T, C = cache.x.shape
    dl = dlogits.reshape(B * T, -1)
    return (dl @ cache.wte.T).reshape(B, T, C), dl.T @ cache.x.reshape(B * T, C)


def model_forward(self, idx):
    """The model's forward pass keeping every cache: (logits (B, T, V), GPTCache)."""
    return self.forward_with_cache(idx)


def _gpt_cases(rng):
    def case(label, B, T, pos="learned", n_layer=2):
        config = GPTConfig(vocab_size=7, block_size=4, n_layer=n_layer, n_head=2, n_embd=4,
                           pos_encoding=pos, dtype="float64")
        m = model.GPT(config, seed=int(rng.integers(1000)))
        for p in m.params.values():                    # beyond the init's 0.02: visible grads
            p += rng.normal(size=p.shape) * 0.3
        return Case(label, {"self": m, "idx": rng.integers(0, 7, size=(B, T))})
    return [case("2 layers, B = 2, T = 4", 2, 4),
            case("T = 1, B = 1", 1, 1),
            case("sinusoidal positions (no wpe)", 2, 3, pos="sinusoidal", n_layer=1)]


exercise("gpt_backward", "the model's backward, the forward in reverse: the tied wte gets "
         "both gradients", reference=model.GPT.backward, forward=model_forward,
         before=("self",), returns=("grads",), wrt={"grads": lambda inputs: inputs["self"].params},
         cases=_gpt_cases, float32=False)


def _gpt_backward(self, dout, cache, head=True, embedding=True, reverse=True, ln_f=True):
    g = {}
    dx, dwte_head = model.lm_head_backward(dout, cache.lm_head)
    if ln_f:
        dx, g["ln_f.weight"], g["ln_f.bias"] = layers.layernorm_backward(dx, cache.ln_f)
    else:
        g["ln_f.weight"], g["ln_f.bias"] = layers.layernorm_backward(dx, cache.ln_f)[1:]
    order = range(self.config.n_layer)
    for i in (reversed(order) if reverse else order):
        dx, grads = model.block_backward(dx, cache.h[i], self.config)
        g.update({f"h.{i}.{name}": grad for name, grad in grads.items()})
    dx = layers.dropout_backward(dx, cache.drop)
    if cache.wpe is not None:
        g["wpe.weight"] = layers.position_embedding_backward(dx, cache.wpe)
    dwte = layers.embedding_backward(dx, cache.wte)
    g["wte.weight"] = (dwte if embedding else 0.0) + (dwte_head if head else 0.0)
    return {name: g[name] for name in self.params}


@mistake("gpt_backward", "wte is used twice, as the embedding and as the output layer: its "
                         "gradient is the sum of both, dwte_head included")
def _(self, dout, cache):
    return _gpt_backward(self, dout, cache, head=False)


@mistake("gpt_backward", "the embedding lookup used wte too: add embedding_backward(dx, "
                         "cache.wte) to the head's dwte")
def _(self, dout, cache):
    return _gpt_backward(self, dout, cache, embedding=False)


@mistake("gpt_backward", "go through the blocks in reverse: the last block's backward comes "
                         "first")
def _(self, dout, cache):
    return _gpt_backward(self, dout, cache, reverse=False)


@mistake("gpt_backward", "ln_f sits between the last block and the head: dx goes through its "
                         "backward before the blocks")
def _(self, dout, cache):
    return _gpt_backward(self, dout, cache, ln_f=False)
