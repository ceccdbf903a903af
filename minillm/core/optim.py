"""Optimization: AdamW, a warmup + cosine learning-rate schedule, gradient clipping.

Parameters are a dict of named NumPy arrays, e.g. ``{"wte.weight": (V, C),
"h.0.ln_1.weight": (C,), ...}``; gradients are a dict with the same keys and shapes.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), step t = 1, 2, ...
with gradient g, learning rate lr, betas (b1, b2), eps and weight decay wd::

    p     <- p * (1 - lr * wd)                  only if p.ndim >= 2 (matrices, embeddings)
    m     <- b1 * m + (1 - b1) * g              first moment (running mean of g)
    v     <- b2 * v + (1 - b2) * g**2           second moment (running mean of g**2)
    m_hat  = m / (1 - b1**t)                    bias correction: m and v start at 0
    v_hat  = v / (1 - b2**t)
    p     <- p - lr * m_hat / (sqrt(v_hat) + eps)

This is exactly the arithmetic of ``torch.optim.AdamW``: decay first, then the Adam
step, with eps added after the bias correction. Biases and LayerNorm gains are not
decayed (as in nanoGPT): pulling a LayerNorm gain towards 0 is not a sensible prior.

Learning-rate schedule (nanoGPT's ``get_lr``), iteration ``it`` counted from 0::

    it <  warmup:           lr = max_lr * (it + 1) / (warmup + 1)
    warmup <= it < decay:   r = (it - warmup) / (decay - warmup)
                            lr = min_lr + 0.5 * (1 + cos(pi * r)) * (max_lr - min_lr)
    it >= decay:            lr = min_lr

Gradient clipping (``torch.nn.utils.clip_grad_norm_``)::

    norm = sqrt(sum over all arrays and entries of g**2)
    c    = max_norm / (norm + 1e-6)
    if c < 1:  g <- c * g   for every gradient array
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .fields import check_fields


@dataclass
class OptimConfig:
    """Optimizer and schedule settings (one CLI flag per field).

    >>> OptimConfig(learning_rate=3e-4).warmup_iters
    100
    """

    learning_rate: float = field(default=1e-3, metadata={
        "help": "peak learning rate (end of warmup)", "above": 0.0})
    min_lr: float = field(default=1e-4, metadata={
        "help": "learning rate after cosine decay", "min": 0.0})
    warmup_iters: int = field(default=100, metadata={
        "help": "iterations of linear warmup", "min": 0})
    lr_decay_iters: int = field(default=2000, metadata={
        "help": "iteration where the decay reaches min_lr", "min": 0})
    beta1: float = field(default=0.9, metadata={
        "help": "AdamW decay rate of m, the mean of g", "min": 0.0, "below": 1.0})
    beta2: float = field(default=0.99, metadata={
        "help": "AdamW decay rate of v, the mean of g**2", "min": 0.0, "below": 1.0})
    eps: float = field(default=1e-8, metadata={
        "help": "AdamW: added to sqrt(v_hat) to avoid / 0", "above": 0.0})
    weight_decay: float = field(default=0.1, metadata={
        "help": "decoupled weight decay (2-D+ params)", "min": 0.0})
    grad_clip: float = field(default=1.0, metadata={
        "help": "max global gradient norm (0 = no clipping)", "min": 0.0})

    def __post_init__(self):
        check_fields(self)
        if self.warmup_iters > self.lr_decay_iters:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) must be at most lr_decay_iters "
                             f"({self.lr_decay_iters}): the cosine decay starts after the warmup")


class AdamW:
    """AdamW over a dict of NumPy arrays, updated in place.

    ``keys`` (optional) names the parameters to train; the others are left frozen
    and get no state (e.g. train only LoRA adapters). State: ``m``, ``v`` (dicts of
    arrays, same dtype as the parameters) and the step count ``t``.

    >>> params = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    >>> opt = AdamW(params, lr=0.1, weight_decay=0.0)
    >>> opt.step({"w": np.ones((2, 2), np.float32), "b": -np.ones(2, np.float32)})
    >>> [round(float(params[k].flat[0]), 4) for k in ("w", "b")]  # first step: lr * sign(g)
    [0.9, 0.1]
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                 keys=None):
        self.params = params
        self.lr = float(lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])  # Python floats: no promotion
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.keys = list(params) if keys is None else list(keys)
        for k in self.keys:
            if k not in params:
                raise ValueError(f"trainable key {k!r} is not in params")
            if not np.issubdtype(params[k].dtype, np.floating):
                raise ValueError(f"param {k!r} has dtype {params[k].dtype}, expected a float dtype")
        self.m = {k: np.zeros_like(params[k]) for k in self.keys}
        self.v = {k: np.zeros_like(params[k]) for k in self.keys}
        self.t = 0

    @classmethod
    def from_config(cls, params, config, keys=None):
        """AdamW with the learning rate, betas, eps and weight decay of an ``OptimConfig``.

        >>> opt = AdamW.from_config({"w": np.ones(2)}, OptimConfig(beta2=0.95))
        >>> opt.lr, opt.beta2
        (0.001, 0.95)
        """
        return cls(params, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                   eps=config.eps, weight_decay=config.weight_decay, keys=keys)

    def step(self, grads, lr=None, run=None):
        """One AdamW update of every trainable param; ``lr`` overrides ``self.lr`` for this step.

        ``run(update, keys)`` (optional) says how to run ``update`` over the parameters' keys:
        by default ``update(keys)``, one after the other; the data-parallel training loop
        passes one that shares the keys out over its threads (``DataParallel.run``)."""
        for k in self.keys:
            if k not in grads:
                raise ValueError(f"no gradient for param {k!r}")
            if grads[k].shape != self.params[k].shape:
                raise ValueError(f"gradient {k!r} has shape {grads[k].shape}, "
                                 f"param has {self.params[k].shape}")
        lr = self.lr if lr is None else float(lr)
        b1, b2 = self.beta1, self.beta2
        self.t += 1
        step_size = lr / (1.0 - b1**self.t)  # lr / bias correction of m
        bc2_sqrt = math.sqrt(1.0 - b2**self.t)  # sqrt(v_hat) = sqrt(v) / bc2_sqrt

        def update(keys):
            for k in keys:
                p, g, m, v = self.params[k], grads[k], self.m[k], self.v[k]
                if p.ndim >= 2 and self.weight_decay != 0.0:
                    p *= 1.0 - lr * self.weight_decay
                m *= b1
                m += (1.0 - b1) * g
                v *= b2
                v += (1.0 - b2) * (g * g)
                u = np.sqrt(v)
                u /= bc2_sqrt
                u += self.eps  # u = sqrt(v_hat) + eps
                np.divide(m, u, out=u)  # u = m / (sqrt(v_hat) + eps)
                u *= step_size  # u = lr * m_hat / (sqrt(v_hat) + eps)
                p -= u

        (run or one_after_another)(update, self.keys)

    def state_dict(self):
        """Copies of the state: ``{"t": int, "m": {key: array}, "v": {key: array}}``.

        Hyperparameters are not included: they come from the constructor (the config).
        """
        return {
            "t": self.t,
            "m": {k: a.copy() for k, a in self.m.items()},
            "v": {k: a.copy() for k, a in self.v.items()},
        }

    def load_state_dict(self, state):
        """Copy a ``state_dict()`` into this optimizer; ValueError naming the key on mismatch."""
        for name in ("t", "m", "v"):
            if name not in state:
                raise ValueError(f"optimizer state has no {name!r} entry")
        for name in ("m", "v"):
            own, new = getattr(self, name), state[name]
            for k in own:
                if k not in new:
                    raise ValueError(f"optimizer state {name!r} is missing key {k!r}")
            for k in new:
                if k not in own:
                    raise ValueError(f"optimizer state {name!r} has unexpected key {k!r}")
                if np.shape(new[k]) != own[k].shape:
                    raise ValueError(f"optimizer state {name}[{k!r}] has shape "
                                     f"{np.shape(new[k])}, expected {own[k].shape}")
        t = int(state["t"])
        if t < 0:
            raise ValueError(f"optimizer state has step count t={t} < 0")
        for name in ("m", "v"):
            for k, a in getattr(self, name).items():
                a[...] = state[name][k]  # copy into our own arrays, keep their dtype
        self.t = t


def lr_schedule(it, max_lr, min_lr, warmup_iters, decay_iters):
    """Learning rate at iteration ``it`` (0-based): linear warmup, cosine decay, then min_lr.

    Warmup uses nanoGPT's current formula ``max_lr * (it + 1) / (warmup_iters + 1)``
    (the older ``max_lr * it / warmup_iters`` gave lr = 0 at it = 0, a wasted step).
    So lr rises to ``max_lr * warmup/(warmup+1)`` at it = warmup - 1 and is exactly
    max_lr at it = warmup_iters, where the cosine starts.

    >>> lr_schedule(0, 1.0, 0.1, warmup_iters=9, decay_iters=100)
    0.1
    """
    if warmup_iters < 0 or decay_iters < warmup_iters:
        raise ValueError(f"need 0 <= warmup_iters <= decay_iters, "
                         f"got {warmup_iters}, {decay_iters}")
    if it < warmup_iters:
        return float(max_lr * (it + 1) / (warmup_iters + 1))
    if it >= decay_iters:
        return float(min_lr)
    ratio = (it - warmup_iters) / (decay_iters - warmup_iters)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return float(min_lr + coeff * (max_lr - min_lr))


def one_after_another(fn, keys):
    """The default ``run`` of AdamW.step and clip_grad_norm: [fn(keys)]."""
    return [fn(keys)]


def clip_grad_norm(grads, max_norm, run=None):
    """Scale all gradients in place so their global L2 norm is at most ~max_norm.

    Returns the norm before clipping as a Python float (summed in float64). A
    non-finite norm (inf/nan) is returned and the gradients are left untouched:
    the caller decides what to do (usually skip the step). ``max_norm=math.inf``
    only measures the norm. ``run`` as for ``AdamW.step``.

    >>> g = {"a": np.array([3.0, 4.0])}
    >>> clip_grad_norm(g, 1.0), g["a"].round(3)
    (5.0, array([0.6, 0.8]))
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    run = run or one_after_another

    def sum_of_squares(keys):
        total = 0.0
        for k in keys:
            g64 = grads[k].astype(np.float64, copy=False)
            total += float(np.vdot(g64, g64))  # sum of squares of all entries
        return total

    def scale(keys):
        for k in keys:
            grads[k] *= coef

    norm = math.sqrt(sum(run(sum_of_squares, list(grads))))
    if not math.isfinite(norm):
        return norm
    coef = float(max_norm) / (norm + 1e-6)
    if coef < 1.0:
        run(scale, list(grads))
    return norm
