"""LoRA: low-rank adapters on frozen weights (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

A frozen linear layer ``out = x @ W + b`` (W shaped (in, out)) gets a trainable update of rank r:

    out   = x @ W + b + s * (x @ A) @ B          two paths: frozen and low-rank
          = x @ (W + s * A @ B) + b              the same thing with one merged weight
    s     = alpha / r
    A: (in, r)  random,  B: (r, out)  zero       so training starts exactly at the base model

Only A and B are trained: r * (in + out) numbers instead of in * out. Their gradients, with
g = dL/dout and h = x @ A:

    dB = s * h^T @ g        dA = s * x^T @ (g @ B^T)        dx = g @ W^T + s * (g @ B^T) @ A^T

Through the merged weight W_eff = W + s * A @ B the same gradients read

    dA = s * dW_eff @ B^T        dB = s * A^T @ dW_eff        (dW_eff = x^T @ g)

which is how the whole model is trained here without touching the model code: build the
effective weights, run the ordinary GPT forward and backward (which returns dW_eff for every
weight), then map each dW_eff to dA, dB. The base parameters are never written.

Initialisation of A: uniform in [-1/sqrt(in), 1/sqrt(in)], what the paper's reference code
(loralib, and Hugging Face PEFT) gets from ``kaiming_uniform_(A, a=sqrt(5))``. B is zero.

Adapter names follow the weight they adapt: ``h.0.attn.c_attn.weight`` gets
``h.0.attn.c_attn.lora_A`` (in, r) and ``h.0.attn.c_attn.lora_B`` (r, out).
"""
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..formats.safetensors import load_file, read_metadata, save_file
from .config import check_tensors
from .model import GPT

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


# ----------------------------------------------------------------------------------------------
# The two layer pairs
# ----------------------------------------------------------------------------------------------

class LoRALinearCache(NamedTuple):
    x: np.ndarray                # (..., in) the input
    W: np.ndarray                # (in, out) the frozen weight
    A: np.ndarray                # (in, r)
    B: np.ndarray                # (r, out)
    h: np.ndarray                # (N, r) x @ A, the input brought down to rank r
    scale: float                 # alpha / r


def lora_linear_forward(x, W, b, A, B, scale):
    """``out = x @ W + b + scale * (x @ A) @ B``: a frozen linear layer plus its low-rank path.

    x: (..., in); W: (in, out); b: (out,) or None; A: (in, r); B: (r, out); scale: float
    -> out: (..., out)

    >>> out, _ = lora_linear_forward(np.ones((2, 3)), np.ones((3, 4)), np.zeros(4),
    ...                              np.ones((3, 1)), np.zeros((1, 4)), 2.0)
    >>> out                                  # B = 0: exactly the frozen layer
    array([[3., 3., 3., 3.],
           [3., 3., 3., 3.]])
    """
    x2 = x.reshape(-1, x.shape[-1])                    # (N, in)
    h = x2 @ A                                         # (N, r)   down to rank r
    out = x2 @ W + scale * (h @ B)                     # (N, out) frozen path + low-rank path
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], W.shape[1]), LoRALinearCache(x, W, A, B, h, scale)


def lora_linear_backward(dout, cache):
    """dout: (..., out) -> dx: (..., in), dA: (in, r), dB: (r, out). W and b are frozen: no
    gradient for them."""
    x, W, A, B, h, scale = cache
    g = dout.reshape(-1, dout.shape[-1])               # (N, out)
    x2 = x.reshape(-1, x.shape[-1])                    # (N, in)
    dh = scale * (g @ B.T)                             # (N, r)
    dB = scale * (h.T @ g)                             # (r, out)
    dA = x2.T @ dh                                     # (in, r)
    dx = (g @ W.T + dh @ A.T).reshape(x.shape)         # (..., in) both paths reach x
    return dx, dA, dB


class LoRAMergeCache(NamedTuple):
    A: np.ndarray                # (in, r)
    B: np.ndarray                # (r, out)
    scale: float                 # alpha / r


def lora_merge_forward(W, A, B, scale):
    """``W_eff = W + scale * A @ B``: the frozen weight with the adapter folded in.

    W: (in, out); A: (in, r); B: (r, out) -> W_eff: (in, out), a new array (W is not written).

    >>> W_eff, _ = lora_merge_forward(np.zeros((2, 2)), np.ones((2, 1)), np.ones((1, 2)), 0.5)
    >>> W_eff
    array([[0.5, 0.5],
           [0.5, 0.5]])
    """
    return W + scale * (A @ B), LoRAMergeCache(A, B, scale)


def lora_merge_backward(dW_eff, cache):
    """dW_eff: (in, out) -> dA: (in, r), dB: (r, out)."""
    A, B, scale = cache
    return scale * (dW_eff @ B.T), scale * (A.T @ dW_eff)


# ----------------------------------------------------------------------------------------------
# Configuration and adapters for a GPT
# ----------------------------------------------------------------------------------------------

@dataclass
class LoRAConfig:
    """Which weights get adapters, and their rank and scale (s = alpha / rank).

    ``targets`` may also be given as one comma-separated string, as on a command line.

    >>> LoRAConfig(rank=4, targets="attn.c_attn,mlp.c_fc").targets
    ('attn.c_attn', 'mlp.c_fc')
    """
    rank: int = field(default=8, metadata={
        "help": "rank r of each adapter (A: in x r, B: r x out)"})
    alpha: float = field(default=16.0, metadata={
        "help": "scale numerator: updates are scaled by alpha / rank"})
    targets: tuple = field(default=("attn.c_attn",), metadata={
        "help": "weights to adapt, comma-separated: " + ", ".join(TARGETS)})

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) \
                or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        self.rank = int(self.rank)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.number)) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        if not self.targets:
            raise ValueError(f"LoRA needs at least one target projection; choose from {TARGETS}")
        for t in self.targets:
            if t not in TARGETS:
                raise ValueError(f"unknown LoRA target projection {t!r}; choose from {TARGETS}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"LoRA targets repeat a projection: {self.targets}")

    @property
    def scale(self):
        """s = alpha / rank, a Python float (keeps float32 arrays float32)."""
        return self.alpha / self.rank


def adapter_shapes(model, config):
    """{adapted weight name: (A name, A shape, B name, B shape)} for every layer and target."""
    shapes = {}
    for i in range(model.config.n_layer):
        for t in config.targets:
            w = f"h.{i}.{t}.weight"
            n_in, n_out = model.params[w].shape
            shapes[w] = (f"h.{i}.{t}.lora_A", (n_in, config.rank),
                         f"h.{i}.{t}.lora_B", (config.rank, n_out))
    return shapes


def init_adapters(model, config, rng):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) and B = 0 for every layer and target, in the model's dtype.

    >>> from minillm import GPTConfig
    >>> m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> adapters = init_adapters(m, LoRAConfig(rank=2), np.random.default_rng(0))
    >>> {k: v.shape for k, v in adapters.items()}
    {'h.0.attn.c_attn.lora_A': (8, 2), 'h.0.attn.c_attn.lora_B': (2, 24)}
    """
    adapters = {}
    for a_name, a_shape, b_name, b_shape in adapter_shapes(model, config).values():
        bound = 1.0 / math.sqrt(a_shape[0])
        adapters[a_name] = rng.uniform(-bound, bound, size=a_shape).astype(model.dtype)
        adapters[b_name] = np.zeros(b_shape, dtype=model.dtype)
    return adapters


def _check_adapters(adapters, model, config, source="adapters"):
    """ValueError naming the first adapter tensor that is missing, unexpected or misshapen."""
    expected = {}
    for a_name, a_shape, b_name, b_shape in adapter_shapes(model, config).values():
        expected[a_name], expected[b_name] = a_shape, b_shape
    check_tensors(adapters, expected, f"{source} (LoRA targets {', '.join(config.targets)})")


class LoRA:
    """A frozen GPT plus trainable adapters. ``model.params`` is only read, never written.

    >>> from minillm import GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> lora = LoRA(model, LoRAConfig(rank=2), rng=np.random.default_rng(0))
    >>> lora.num_trainable()                 # rank * (in + out) = 2 * (8 + 24)
    64
    >>> idx = np.array([[1, 2, 3]])
    >>> bool(np.array_equal(lora.forward(idx), model.forward(idx)))   # B = 0 at the start
    True
    """

    def __init__(self, model, config=None, adapters=None, rng=None):
        self.model = model
        self.config = LoRAConfig() if config is None else config
        if adapters is None:
            rng = np.random.default_rng(0) if rng is None else rng
            adapters = init_adapters(model, self.config, rng)
        _check_adapters(adapters, model, self.config)
        for name, a in adapters.items():
            if a.dtype != model.dtype:
                raise ValueError(f"adapter {name!r} is {a.dtype}, the model is {model.dtype}")
        self.adapters = adapters
        self._names = adapter_shapes(model, self.config)   # weight -> (A name, _, B name, _)

    def _effective(self):
        """(params with W_eff for each adapted weight and the base arrays elsewhere, caches)."""
        params, caches = dict(self.model.params), {}
        for w, (a_name, _, b_name, _) in self._names.items():
            params[w], caches[w] = lora_merge_forward(
                self.model.params[w], self.adapters[a_name], self.adapters[b_name],
                self.config.scale)
        return params, caches

    def _view(self, params):
        """A GPT reading ``params``, sharing the base model's config and dropout rng."""
        view = GPT(self.model.config, params=params)
        view.rng = self.model.rng
        return view

    def forward(self, idx, **kwargs):
        """Logits (B, T, V) of base + adapters; keyword arguments as for ``GPT.forward``.
        (To generate text, ``merge()`` once instead of re-merging on every call.)"""
        return self._view(self._effective()[0]).forward(idx, **kwargs)

    def loss(self, idx, targets, train=False, rng=None):
        """Mean cross-entropy of base + adapters, as ``GPT.loss``."""
        return self._view(self._effective()[0]).loss(idx, targets, train=train, rng=rng)

    def loss_and_grads(self, idx, targets, train=True, rng=None):
        """Mean cross-entropy and the gradient of every adapter tensor (only those keys).

        The model's backward gives dW_eff for every weight (and gradients of the frozen
        parameters, which are simply dropped); ``lora_merge_backward`` turns dW_eff into dA, dB.
        """
        view, caches = self.merged_view()
        loss, grads = view.loss_and_grads(idx, targets, train=train, rng=rng)
        return loss, self.adapter_grads(grads, caches)

    def merged_view(self):
        """(a GPT reading W_eff = W + s A B for each adapted weight and the base arrays
        elsewhere, the merge caches). Any loss works through it: run the view's forward and
        backward (a classifier on its hidden states, say), then ``adapter_grads``."""
        params, caches = self._effective()
        return self._view(params), caches

    def adapter_grads(self, grads, caches):
        """{adapter name: gradient} from the gradients of the view's weights (``grads``, a dict
        by parameter name holding at least every adapted weight) and ``merged_view``'s caches."""
        out = {}
        for w, (a_name, _, b_name, _) in self._names.items():
            out[a_name], out[b_name] = lora_merge_backward(grads[w], caches[w])
        return {name: out[name] for name in self.adapters}

    def merge(self):
        """A new, independent plain GPT whose logits equal base + adapters."""
        merged = self._effective()[0]
        own = {k: (v if k in self._names else v.copy()) for k, v in merged.items()}
        return GPT(self.model.config, params=own)

    def num_trainable(self):
        """Number of adapter parameters: n_layer * sum over targets of rank * (in + out)."""
        return sum(a.size for a in self.adapters.values())

    def num_total(self):
        """Base model parameters plus adapter parameters."""
        return self.model.num_params() + self.num_trainable()

    def save(self, path):
        """Write the adapters alone (not the base model) to a safetensors file, atomically,
        with rank, alpha and targets in its metadata."""
        meta = {"format": "minillm-lora", "rank": str(self.config.rank),
                "alpha": repr(self.config.alpha), "targets": ",".join(self.config.targets)}
        save_file(self.adapters, path, metadata=meta)

    @classmethod
    def load(cls, path, model):
        """Adapters saved by ``save`` on top of ``model``; ValueError if the file does not
        match the model (naming the tensor). Tensors are cast to the model's dtype."""
        path = os.fspath(path)
        meta = read_metadata(path)
        missing = [k for k in ("rank", "alpha", "targets") if k not in meta]
        if missing:
            raise ValueError(f"{path!r} is not a LoRA adapter file: metadata lacks {missing}")
        try:
            config = LoRAConfig(rank=int(meta["rank"]), alpha=float(meta["alpha"]),
                                targets=meta["targets"])
        except ValueError as exc:
            raise ValueError(f"LoRA adapter file {path!r} has bad metadata: {exc}") from None
        adapters = load_file(path)
        _check_adapters(adapters, model, config, source=f"LoRA adapter file {path!r}")
        adapters = {k: v.astype(model.dtype, copy=False) for k, v in adapters.items()}
        return cls(model, config, adapters)
