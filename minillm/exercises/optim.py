"""Exercises of notebook 07: the optimizer (minillm/core/optim.py).

    adamw_step       AdamW.step(self, grads, lr=None)   one update, with bias correction
    lr_schedule      lr_schedule(it, max_lr, min_lr, warmup_iters, decay_iters)
    clip_grad_norm   clip_grad_norm(grads, max_norm)    one global norm, scaled down in place

``adamw_step`` re-implements a method: the student writes ``def step(self, grads, lr=None)``
and reads ``self.params``, ``self.m``, ``self.v``, ``self.t`` and the hyperparameters; the check
compares the parameters, moments and step count after the call.

>>> from minillm.exercises import check
>>> check("lr_schedule", optim.lr_schedule, verbose=False).passed
True
"""
import math

import numpy as np

from ..core import optim
from .running import invoke
from .registry import Case, exercise, mistake


# ----------------------------------------------------------------------------------------------
# One AdamW step
# ----------------------------------------------------------------------------------------------

def _adamw_cases(rng):
    def opt(t=0, keys=None, **hyper):
        params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
        o = optim.AdamW(params, **{"lr": 0.1, "weight_decay": 0.1, **hyper}, keys=keys)
        o.t = t
        for k in o.keys:
            o.m[k][...] = rng.normal(size=params[k].shape) * 0.1 * (t > 0)
            o.v[k][...] = rng.random(size=params[k].shape) * 0.01 * (t > 0)
        return o

    def grads():
        return {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    return [Case("step 8: moments under way", dict(self=opt(t=7, eps=1e-4), grads=grads())),
            Case("the first step, t = 0", dict(self=opt(), grads=grads())),
            Case("lr given for this step", dict(self=opt(t=2), grads=grads(), lr=0.03)),
            Case("only 'w' trained (keys)", dict(self=opt(t=1, keys=["w"]), grads=grads())),
            Case("no weight decay, beta2 0.95", dict(self=opt(t=3, weight_decay=0.0,
                                                              betas=(0.9, 0.95)),
                                                     grads=grads()))]


def _run_step(fn, inputs):
    opt = inputs["self"]
    invoke(optim.AdamW.step, fn, inputs)
    return opt.params, opt.m, opt.v, opt.t


exercise("adamw_step", "one AdamW step: moments, bias correction, decoupled weight decay",
         reference=optim.AdamW.step, returns=("params", "m", "v", "t"), run=_run_step,
         cases=_adamw_cases)


def _step(self, grads, lr=None, correct=True, t_first=True, decay_all=False, l2=False,
          eps_inside=False, square=True, decay_last=False):
    lr = self.lr if lr is None else lr
    b1, b2 = self.beta1, self.beta2
    if t_first:
        self.t += 1
    bc1 = (1.0 - b1 ** self.t) if correct else 1.0
    bc2 = (1.0 - b2 ** self.t) if correct else 1.0
    for k in self.keys:
        p, g = self.params[k], grads[k]
        decay = (p.ndim >= 2 or decay_all) and self.weight_decay != 0.0
        if l2 and decay:
            g = g + self.weight_decay * p
        elif decay and not decay_last:
            p *= 1.0 - lr * self.weight_decay
        self.m[k] = b1 * self.m[k] + (1.0 - b1) * g
        self.v[k] = b2 * self.v[k] + (1.0 - b2) * (g * g if square else g)
        m_hat, v_hat = self.m[k] / bc1, self.v[k] / bc2
        denom = np.sqrt(v_hat + self.eps) if eps_inside else np.sqrt(v_hat) + self.eps
        p -= lr * m_hat / denom
        if decay and decay_last and not l2:
            p *= 1.0 - lr * self.weight_decay
    if not t_first:
        self.t += 1


@mistake("adamw_step", "bias correction: m and v start at 0, so divide by (1 - beta1^t) and "
                       "(1 - beta2^t)")
def _(self, grads, lr=None):
    _step(self, grads, lr, correct=False)


@mistake("adamw_step", "count the step first: the first step is t = 1 (with t = 0, "
                       "1 - beta^0 = 0 and the correction divides by zero)")
def _(self, grads, lr=None):
    with np.errstate(divide="ignore", invalid="ignore"):
        _step(self, grads, lr, t_first=False)


@mistake("adamw_step", "weight decay only on matrices (p.ndim >= 2): biases and LayerNorm "
                       "gains are not decayed")
def _(self, grads, lr=None):
    _step(self, grads, lr, decay_all=True)


@mistake("adamw_step", "AdamW decays the weight itself, p *= 1 - lr * wd; adding wd * p to the "
                       "gradient is Adam with L2, which the moments rescale")
def _(self, grads, lr=None):
    _step(self, grads, lr, l2=True)


@mistake("adamw_step", "eps goes outside the square root: m_hat / (sqrt(v_hat) + eps)")
def _(self, grads, lr=None):
    _step(self, grads, lr, eps_inside=True)


@mistake("adamw_step", "v is the running mean of g * g, the squared gradient")
def _(self, grads, lr=None):
    with np.errstate(invalid="ignore"):
        _step(self, grads, lr, square=False)


@mistake("adamw_step", "decay first, then the Adam step (torch.optim.AdamW's order)")
def _(self, grads, lr=None):
    _step(self, grads, lr, decay_last=True)


@mistake("adamw_step", "lr, when given, overrides self.lr for this step")
def _(self, grads, lr=None):
    _step(self, grads)


# ----------------------------------------------------------------------------------------------
# The learning-rate schedule
# ----------------------------------------------------------------------------------------------

def _lr_cases(rng):
    def case(label, its, max_lr, min_lr, warmup, decay):
        return Case(label, dict(it=np.arange(its), max_lr=max_lr, min_lr=min_lr,
                                warmup_iters=warmup, decay_iters=decay))
    return [case("warmup 10, decay to it 100", 121, 6e-4, 6e-5, 10, 100),
            case("no warmup", 61, 1e-3, 1e-4, 0, 50),
            case("warmup = decay (no cosine)", 31, 1.0, 0.1, 20, 20),
            case("1 warmup step, min_lr 0", 12, 3e-4, 0.0, 1, 9)]


exercise("lr_schedule", "linear warmup, cosine decay to min_lr, then min_lr (nanoGPT's get_lr)",
         reference=optim.lr_schedule, returns=("lr",), sweep="it", cases=_lr_cases,
         bound=1e-10, float32=False)


@mistake("lr_schedule", "the warmup gives lr = 0 at it = 0 (a wasted step): warm up with "
                        "max_lr * (it + 1) / (warmup_iters + 1)")
def _(it, max_lr, min_lr, warmup_iters, decay_iters):
    if it < warmup_iters:
        return max_lr * it / warmup_iters
    return optim.lr_schedule(it, max_lr, min_lr, warmup_iters, decay_iters)


@mistake("lr_schedule", "the cosine's progress starts at the end of the warmup: "
                        "r = (it - warmup_iters) / (decay_iters - warmup_iters)")
def _(it, max_lr, min_lr, warmup_iters, decay_iters):
    if warmup_iters <= it < decay_iters:
        coeff = 0.5 * (1.0 + math.cos(math.pi * it / decay_iters))
        return min_lr + coeff * (max_lr - min_lr)
    return optim.lr_schedule(it, max_lr, min_lr, warmup_iters, decay_iters)


@mistake("lr_schedule", "coeff = 0.5 * (1 + cos(pi r)) runs from 1 to 0; without the 0.5 it "
                        "runs from 2 to 0")
def _(it, max_lr, min_lr, warmup_iters, decay_iters):
    if warmup_iters <= it < decay_iters:
        r = (it - warmup_iters) / (decay_iters - warmup_iters)
        return min_lr + (1.0 + math.cos(math.pi * r)) * (max_lr - min_lr)
    return optim.lr_schedule(it, max_lr, min_lr, warmup_iters, decay_iters)


@mistake("lr_schedule", "the cosine decays to min_lr, not to 0: lr = min_lr + coeff * "
                        "(max_lr - min_lr)")
def _(it, max_lr, min_lr, warmup_iters, decay_iters):
    if warmup_iters <= it < decay_iters:
        r = (it - warmup_iters) / (decay_iters - warmup_iters)
        return 0.5 * (1.0 + math.cos(math.pi * r)) * max_lr
    return optim.lr_schedule(it, max_lr, min_lr, warmup_iters, decay_iters)


@mistake("lr_schedule", "past decay_iters the rate stays at min_lr (the cosine would rise "
                        "again)")
def _(it, max_lr, min_lr, warmup_iters, decay_iters):
    if it >= warmup_iters and decay_iters > warmup_iters:
        r = (it - warmup_iters) / (decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (max_lr - min_lr)
    return optim.lr_schedule(it, max_lr, min_lr, warmup_iters, decay_iters)


# ----------------------------------------------------------------------------------------------
# Gradient clipping
# ----------------------------------------------------------------------------------------------

def _clip_cases(rng):
    return [Case("norm above max_norm: scaled down", dict(
                grads={"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4) * 3.0},
                max_norm=1.0)),
            Case("norm below max_norm: left alone", dict(
                grads={"w": rng.normal(size=(2, 2)) * 0.1, "b": rng.normal(size=2) * 0.1},
                max_norm=5.0)),
            Case("one array, norm 5", dict(grads={"a": np.array([3.0, 4.0])}, max_norm=2.0)),
            Case("an inf gradient: nothing scaled", dict(
                grads={"w": np.array([[1.0, np.inf]]), "b": rng.normal(size=3)},
                max_norm=1.0))]


def _run_clip(fn, inputs):
    norm = invoke(optim.clip_grad_norm, fn, inputs)
    return norm, inputs["grads"]


exercise("clip_grad_norm", "scale all gradients together so their global norm is at most "
         "max_norm", reference=optim.clip_grad_norm, returns=("norm", "grads"), run=_run_clip,
         cases=_clip_cases)


def _clip(grads, max_norm, per_array=False, only_down=True, after=False, tiny=1e-6,
          finite_check=True, norm_of_norms=False):
    def norm_of(arrays):
        if norm_of_norms:
            return sum(math.sqrt(float(np.vdot(g, g))) for g in arrays)
        return math.sqrt(sum(float(np.vdot(g.astype(np.float64), g)) for g in arrays))
    groups = [[g] for g in grads.values()] if per_array else [list(grads.values())]
    total = norm_of(grads.values())
    if not math.isfinite(total) and finite_check:
        return total
    with np.errstate(invalid="ignore"):
        for arrays in groups:
            coef = float(max_norm) / (norm_of(arrays) + tiny)
            if coef < 1.0 or not only_down:
                for g in arrays:
                    g *= coef
    return norm_of(grads.values()) if after else total


@mistake("clip_grad_norm", "the norm is global: one norm over all the gradient arrays "
                           "together, and one factor for all of them")
def _(grads, max_norm):
    return _clip(grads, max_norm, per_array=True)


@mistake("clip_grad_norm", "clipping only scales down: when the norm is below max_norm the "
                           "gradients are left as they are")
def _(grads, max_norm):
    return _clip(grads, max_norm, only_down=False)


@mistake("clip_grad_norm", "return the norm before clipping (what training logs)")
def _(grads, max_norm):
    return _clip(grads, max_norm, after=True)


@mistake("clip_grad_norm", "the factor is max_norm / (norm + 1e-6), as torch's "
                           "clip_grad_norm_")
def _(grads, max_norm):
    return _clip(grads, max_norm, tiny=0.0)


@mistake("clip_grad_norm", "a non-finite norm is returned with the gradients left alone (the "
                           "caller skips the step): scaling by max_norm / inf gives NaN")
def _(grads, max_norm):
    return _clip(grads, max_norm, finite_check=False)


@mistake("clip_grad_norm", "the global norm is the square root of the sum of all the squares, "
                           "not the sum of the arrays' norms")
def _(grads, max_norm):
    return _clip(grads, max_norm, norm_of_norms=True)
