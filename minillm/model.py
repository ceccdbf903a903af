"""The GPT model: configuration, GPT-2 initialisation, forward pass and hand-written backward pass.

    x      = wte[idx] + wpe[:T]              token + position embeddings    (B, T, C)
    x      = block_i(x), i = 0 .. n_layer-1  pre-LN Transformer blocks      (B, T, C)
    x      = ln_f(x)                                                        (B, T, C)
    logits = x @ wte^T                       LM head tied to the embedding  (B, T, V)

The backward pass (``GPT.backward``) is the same list of calls read bottom to top.

Shape legend: B batch, T time, C channels (n_embd), V vocabulary, nh heads, hs head size.
"""
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .attention import KVCache
from .block import block_backward, block_forward
from .layers import (cross_entropy_backward, cross_entropy_forward, dropout_backward,
                     dropout_forward, embedding_backward, embedding_forward, layernorm_backward,
                     layernorm_forward, position_embedding_backward, position_embedding_forward,
                     sinusoidal_encoding)

DTYPES = ("float32", "float64")
POS_ENCODINGS = ("learned", "sinusoidal")


@dataclass
class GPTConfig:
    """The shape of a GPT. Defaults are nanoGPT's CPU "baby GPT" on Tiny Shakespeare."""
    vocab_size: int = field(default=65, metadata={"help": "number of token ids V"})
    block_size: int = field(default=64, metadata={"help": "longest context T the model reads"})
    n_layer: int = field(default=4, metadata={"help": "number of Transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block"})
    n_embd: int = field(default=128, metadata={"help": "channels C (a multiple of n_head)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability while training"})
    pos_encoding: str = field(default="learned", metadata={"help": "learned | sinusoidal"})
    dtype: str = field(default="float32", metadata={"help": "float32 | float64"})

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"unknown pos_encoding {self.pos_encoding!r}; use one of {POS_ENCODINGS}")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; use one of {DTYPES}")

    def to_dict(self):
        return asdict(self)


def param_shapes(cfg):
    """Names and shapes of every parameter, in GPT-2's Hugging Face naming and order."""
    V, C, L = cfg.vocab_size, cfg.n_embd, cfg.n_layer
    shapes = {"wte.weight": (V, C)}
    if cfg.pos_encoding == "learned":
        shapes["wpe.weight"] = (cfg.block_size, C)
    for i in range(L):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


BLOCK_PARAMS = [name[len("h.0."):] for name in param_shapes(GPTConfig(n_layer=1)) if name.startswith("h.0.")]


def init_params(cfg, rng):
    """GPT-2 initialisation: weights ~ N(0, 0.02), the two residual projections of each block
    scaled down by 1/sqrt(2 n_layer) (each block adds two branches to the residual stream),
    biases zero, LayerNorm weights one. Drawn in float64, then cast, so a float32 and a float64
    model with the same seed hold the same numbers."""
    params = {}
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, shape in param_shapes(cfg).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            p = np.ones(shape)
        elif name.endswith(".bias"):
            p = np.zeros(shape)
        elif name.endswith("c_proj.weight"):
            p = rng.normal(0.0, resid_std, size=shape)
        else:
            p = rng.normal(0.0, 0.02, size=shape)
        params[name] = p.astype(cfg.dtype)
    return params


def lm_head_forward(x, wte):
    """logits = x @ wte^T, the output layer tied to the token embedding.
    x: (B, T, C); wte: (V, C) -> logits: (B, T, V)."""
    B, T, C = x.shape
    logits = x.reshape(B * T, C) @ wte.T               # (B*T, V)
    return logits.reshape(B, T, -1), (x, wte)


def lm_head_backward(dlogits, cache):
    """dlogits: (B, T, V) -> dx: (B, T, C), dwte: (V, C) (this use of wte only)."""
    x, wte = cache
    B, T, C = x.shape
    dl = dlogits.reshape(B * T, -1)                    # (B*T, V)
    dx = (dl @ wte).reshape(B, T, C)
    dwte = dl.T @ x.reshape(B * T, C)                  # (V, C)
    return dx, dwte


class GPT:
    """A GPT-2-style language model whose parameters are a dict of named NumPy arrays.

    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> model.forward(np.array([[1, 2, 3]])).shape
    (1, 3, 11)
    """

    def __init__(self, config, seed=0, params=None):
        self.config = config
        self.rng = np.random.default_rng(seed)   # initialisation, then dropout unless rng is given
        self.params = init_params(config, self.rng) if params is None else params
        self._pe = None

    @property
    def dtype(self):
        return np.dtype(self.config.dtype)

    def num_params(self):
        return sum(p.size for p in self.params.values())

    def block_params(self, i):
        """Block i's parameters under names relative to the block, e.g. ``ln_1.weight``."""
        return {name: self.params[f"h.{i}.{name}"] for name in BLOCK_PARAMS}

    # -- input checks ------------------------------------------------------------------------

    def _check_idx(self, idx, start=0):
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"token ids must be a 2-D (B, T) array, got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {idx.dtype}")
        T, cfg = idx.shape[1], self.config
        if T == 0:
            raise ValueError("token ids are empty (T = 0)")
        if start + T > cfg.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {cfg.block_size}")
        lo, hi = idx.min(), idx.max()
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside [0, {cfg.vocab_size}) (vocab_size)")
        return idx

    def _check_targets(self, targets, shape):
        targets = np.asarray(targets)
        if targets.shape != shape:
            raise ValueError(f"targets have shape {targets.shape}, token ids {shape}")
        if targets.dtype.kind not in "iu":
            raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
        bad = (targets < -1) | (targets >= self.config.vocab_size)
        if bad.any():
            raise ValueError(f"target {targets[bad][0]} is outside [0, {self.config.vocab_size})"
                             " (and is not -1, the ignored target)")
        return targets

    # -- forward and backward ----------------------------------------------------------------

    def _forward(self, idx, train=False, rng=None, kv_cache=None, last_only=False):
        """Forward pass keeping every layer's cache. idx: (B, T) -> logits (B, T, V), caches.
        With last_only (generation), only the last position goes through ln_f and the head."""
        cfg, p = self.config, self.params
        start = 0 if kv_cache is None else kv_cache.length
        idx = self._check_idx(idx, start)
        T = idx.shape[1]
        rng = self.rng if rng is None else rng
        caches = {}
        tok_emb, caches["wte"] = embedding_forward(idx, p["wte.weight"])             # (B, T, C)
        if cfg.pos_encoding == "learned":
            pos_emb, caches["wpe"] = position_embedding_forward(p["wpe.weight"], T, start)  # (T, C)
        else:
            pos_emb = self.sinusoidal()[start:start + T]                               # (T, C)
        x, caches["drop"] = dropout_forward(tok_emb + pos_emb, cfg.dropout, rng, train)
        caches["h"] = []
        for i in range(cfg.n_layer):
            x, cache = block_forward(x, self.block_params(i), cfg.n_head, cfg.dropout, rng,
                                     train, kv_cache, i)
            caches["h"].append(cache)
        if last_only:
            x = x[:, -1:]                                                              # (B, 1, C)
        x, caches["ln_f"] = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        logits, caches["lm_head"] = lm_head_forward(x, p["wte.weight"])               # (B, T, V)
        if kv_cache is not None:
            kv_cache.length += T
        return logits, caches

    def backward(self, dlogits, caches):
        """Gradients of every parameter from dlogits (B, T, V): the forward pass in reverse."""
        g = {}
        dx, dwte_head = lm_head_backward(dlogits, caches["lm_head"])
        dx, g["ln_f.weight"], g["ln_f.bias"] = layernorm_backward(dx, caches["ln_f"])
        for i in reversed(range(self.config.n_layer)):
            dx, block_grads = block_backward(dx, caches["h"][i])
            g.update({f"h.{i}.{name}": grad for name, grad in block_grads.items()})
        dx = dropout_backward(dx, caches["drop"])
        if "wpe" in caches:
            g["wpe.weight"] = position_embedding_backward(dx, caches["wpe"])
        g["wte.weight"] = embedding_backward(dx, caches["wte"]) + dwte_head  # tied: both uses add
        return {name: g[name] for name in self.params}

    def forward(self, idx, return_attention=False, train=False, rng=None, kv_cache=None,
                last_only=False):
        """idx: int (B, T) -> logits (B, T, V); with return_attention also a list holding one
        (B, nh, T, S) array of attention weights per layer (S = T without a KV cache).
        ``kv_cache`` (from ``new_kv_cache``) continues after the positions it holds;
        ``last_only`` returns the logits of the last position only, (B, 1, V)."""
        logits, caches = self._forward(idx, train, rng, kv_cache, last_only)
        if return_attention:
            return logits, [c.attn.attn.att for c in caches["h"]]
        return logits

    def loss_and_grads(self, idx, targets, train=True, rng=None):
        """Mean cross-entropy of targets (B, T) (-1 = ignored) and the gradient of every
        parameter: a dict with exactly the keys and shapes of ``self.params``."""
        logits, caches = self._forward(idx, train, rng)
        targets = self._check_targets(targets, logits.shape[:2])
        loss, loss_cache = cross_entropy_forward(logits, targets)
        dlogits = cross_entropy_backward(1.0, loss_cache)
        return loss, self.backward(dlogits, caches)

    def loss(self, idx, targets, train=False, rng=None):
        """Mean cross-entropy without gradients (evaluation mode, no dropout, unless train)."""
        logits = self.forward(idx, train=train, rng=rng)
        return cross_entropy_forward(logits, self._check_targets(targets, logits.shape[:2]))[0]

    def sinusoidal(self):
        if self._pe is None:
            self._pe = sinusoidal_encoding(self.config.block_size, self.config.n_embd, self.dtype)
        return self._pe

    @classmethod
    def from_pretrained(cls, folder, dtype="float32"):
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors, and vocab.json +
        merges.txt when present). The tokenizer, or None, is kept as ``model.tokenizer``."""
        from .pretrained import load_pretrained
        model, tokenizer = load_pretrained(folder, dtype)
        model.tokenizer = tokenizer
        return model

    def save_pretrained(self, folder, tokenizer=None):
        """Write config.json + model.safetensors (+ vocab.json/merges.txt) that Transformers'
        GPT2LMHeadModel.from_pretrained reads."""
        from .pretrained import save_pretrained
        save_pretrained(self, folder, tokenizer if tokenizer is not None else getattr(self, "tokenizer", None))

    def new_kv_cache(self, batch_size=1):
        cfg = self.config
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size,
                       cfg.n_embd // cfg.n_head, self.dtype)
