"""The GPT model: GPT-2 initialisation, the forward pass and the hand-written backward pass.

    x      = wte[idx] + wpe[:T]              token + position embeddings    (B, T, C)
                                             (no wpe with rotary positions: they turn q and k)
    x      = block_i(x), i = 0 .. n_layer-1  pre-norm Transformer blocks    (B, T, C)
    x      = ln_f(x)                         LayerNorm or RMSNorm           (B, T, C)
    logits = x @ wte^T                       LM head tied to the embedding  (B, T, V)
                                             (or x @ lm_head^T, untied)

The config chooses the pieces (GPT-2's by default; ``GPTConfig.llama()`` for RMSNorm, rotary
positions, SwiGLU, grouped-query attention, no biases, an untied head); the names of the
parameters stay GPT-2's (``config.py``). The backward pass (``GPT.backward``) is the same list
of calls read bottom to top.

What the forward pass keeps for the backward pass (``GPTCache``, like llm.c's activations):

    field     what it holds                                           shapes
    wte       EmbeddingCache: the token ids                           idx (B, T)
    wpe       PositionCache: the rows of wpe used (None otherwise)    start, block_size
    drop      DropoutCache: the embedding dropout mask                (B, T, C) or None
    h[i]      BlockCache of block i:
                ln_1, ln_2  LayerNormCache: input, mean, rstd         (B, T, C), (B, T, 1) x2
                            (RMSNormCache: input, rstd)               (B, T, C), (B, T, 1)
                attn        MHACache: c_attn's input                  (B, T, C)
                            rope: the cos, sin tables (or None)       (T, hs) x2
                            q, grouped; k and v (S = T + cached)      (B, nkv, g, T, hs);
                                                                      (B, nkv, 1, S, hs)
                            att, the attention weights                (B, nkv, g, T, S)
                            c_proj's input (heads side by side)       (B, T, C)
                drop_1/2    the branches' dropout masks               (B, T, C) or None
                mlp         MLPCache: c_fc's input                    (B, T, C)
                            GELU's input and its sigmoid              (B, T, I) x2
                            (SwiGLUCache: c_fc's input; the gate and  (B, T, C); (B, T, I) x2;
                            its sigmoid; silu(gate), up)              (B, T, I) x2
    ln_f      LayerNormCache or RMSNormCache                          (B, T, C), (B, T, 1)
    lm_head   LMHeadCache: ln_f's output, the head's weights          (B, T, C), (V, C)

Shape legend: B batch, T time, S time of the keys, C channels (n_embd), V vocabulary,
nh query heads, nkv key/value heads, g = nh / nkv, hs head size, I intermediate size.
"""
import math
from typing import NamedTuple

import numpy as np

from ..formats import hf
from .attention import KVCache, RollingKVCache
from .block import block_backward, block_forward, norm_backward, norm_forward
from .config import GPTConfig, block_param_shapes, param_shapes  # noqa: F401 (doctests)
from .layers import (DropoutCache, EmbeddingCache, PositionCache, cross_entropy_backward,
                     cross_entropy_forward, dropout_backward, dropout_forward, embedding_backward,
                     embedding_forward, position_embedding_backward, position_embedding_forward,
                     sinusoidal_encoding)
from .rope import rope_tables


def init_params(config, rng):
    """GPT-2 initialisation: weights ~ N(0, 0.02), the two residual projections of each block
    scaled down by 1/sqrt(2 n_layer) (each block adds two branches to the residual stream),
    biases zero, norm weights one; the same for every configuration (an untied lm_head is
    N(0, 0.02) like wte). Drawn in float64, then cast, so a float32 and a float64 model with
    the same seed hold the same numbers.

    >>> p = init_params(GPTConfig(n_layer=2), np.random.default_rng(0))
    >>> float(p["h.0.ln_1.weight"][0]), float(p["h.0.attn.c_attn.bias"][0])
    (1.0, 0.0)
    """
    params = {}
    resid_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, shape in param_shapes(config).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            p = np.ones(shape)
        elif name.endswith(".bias"):
            p = np.zeros(shape)
        elif name.endswith("c_proj.weight"):
            p = rng.normal(0.0, resid_std, size=shape)
        else:
            p = rng.normal(0.0, 0.02, size=shape)
        params[name] = p.astype(config.dtype)
    return params


class LMHeadCache(NamedTuple):
    x: np.ndarray                # (B, T, C) the final hidden states
    wte: np.ndarray              # (V, C) the weights: wte when tied, lm_head otherwise


def lm_head_forward(x, wte):
    """logits = x @ wte^T, the output layer (wte itself when tied to the token embedding, or an
    untied lm_head of the same shape). x: (B, T, C); wte: (V, C) -> logits: (B, T, V).

    >>> logits, _ = lm_head_forward(np.ones((1, 2, 3)), np.eye(5, 3))
    >>> logits.shape
    (1, 2, 5)
    """
    B, T, C = x.shape
    logits = x.reshape(B * T, C) @ wte.T               # (B*T, V)
    return logits.reshape(B, T, -1), LMHeadCache(x, wte)


def lm_head_backward(dlogits, cache):
    """dlogits: (B, T, V) -> dx: (B, T, C), dwte: (V, C) (this use of the weights only)."""
    x, wte = cache
    B, T, C = x.shape
    dl = dlogits.reshape(B * T, -1)                    # (B*T, V)
    dx = (dl @ wte).reshape(B, T, C)
    dwte = dl.T @ x.reshape(B * T, C)                  # (V, C)
    return dx, dwte


class GPTCache(NamedTuple):
    """Everything the backward pass needs, layer by layer (see the table in the module's doc)."""
    wte: EmbeddingCache
    wpe: PositionCache           # None with sinusoidal or rotary positions
    drop: DropoutCache
    h: list                      # one BlockCache per block
    ln_f: tuple                  # LayerNormCache or RMSNormCache
    lm_head: LMHeadCache         # None when the forward pass stopped at the hidden states

    @property
    def att(self):
        """The attention weights of every block: a list of (B, nh, T, S) arrays."""
        return [block.att for block in self.h]


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
        self._block_names = list(block_param_shapes(config))
        self._positions = None                   # the sinusoidal table, made on first use
        self._rope = None                        # the rotary tables, made on first use

    @property
    def dtype(self):
        return np.dtype(self.config.dtype)

    def num_params(self):
        return sum(p.size for p in self.params.values())

    def block_params(self, i):
        """Block i's parameters under names relative to the block, e.g. ``ln_1.weight``."""
        return {name: self.params[f"h.{i}.{name}"] for name in self._block_names}

    # ------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------

    def _check_idx(self, idx, start=0, rolling=False):
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"token ids must be a 2-D (B, T) array, got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {idx.dtype}")
        T, config = idx.shape[1], self.config
        if T == 0:
            raise ValueError("token ids are empty (T = 0)")
        if (T if rolling else start + T) > config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {config.block_size}")
        lo, hi = idx.min(), idx.max()
        if lo < 0 or hi >= config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside [0, {config.vocab_size}) (vocab_size)")
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

    def _check_head_mask(self, head_mask):
        if head_mask is None:
            return None
        head_mask = np.asarray(head_mask)
        shape = (self.config.n_layer, self.config.n_head)
        if head_mask.shape != shape:
            raise ValueError(f"head_mask must have shape (n_layer, n_head) = {shape}, got "
                             f"{head_mask.shape}")
        if head_mask.dtype.kind not in "biuf":
            raise ValueError(f"head_mask must hold numbers, got dtype {head_mask.dtype}")
        return head_mask

    # ------------------------------------------------------------------------------------------
    # Forward and backward
    # ------------------------------------------------------------------------------------------

    def forward_with_cache(self, idx, *, train=False, rng=None, kv_cache=None, last_only=False,
                           lm_head=True, head_mask=None, head_hook=None):
        """The forward pass keeping every layer's cache: idx (B, T) -> logits (B, T, V), GPTCache.

        ``kv_cache`` (from ``new_kv_cache``) continues after the positions it holds; with
        ``last_only`` (generation) only the last position goes through the last block's query,
        output projection and MLP, ln_f and the head (every position still gives its keys and
        values): logits (B, 1, V), the same numbers as the last row of the full forward. With
        ``lm_head=False`` the output is the final hidden state, ln_f's output (B, T, C), for a
        head of another kind on top (a classifier); ``backward`` then takes its gradient.
        ``head_mask`` (n_layer, n_head) multiplies each head's output before c_proj (ones change
        nothing, 0 removes the head; ``backward`` then also gives its gradient);
        ``head_hook(layer, heads)`` sees and may replace the heads' outputs (B, T, nh, hs) of
        every layer (forward only; see ``mha_forward`` and minillm.interpret)."""
        config, p = self.config, self.params
        start = 0 if kv_cache is None else kv_cache.length
        idx = self._check_idx(idx, start, rolling=kv_cache is not None and kv_cache.rolling)
        head_mask = self._check_head_mask(head_mask)
        T = idx.shape[1]
        rng = self.rng if rng is None else rng
        x, wte_cache = embedding_forward(idx, p["wte.weight"])                         # (B, T, C)
        wpe_cache, rope = None, None
        if config.pos_encoding == "learned":
            pos_emb, wpe_cache = position_embedding_forward(p["wpe.weight"], T, start)  # (T, C)
            x = x + pos_emb
        elif config.pos_encoding == "sinusoidal":
            x = x + self.sinusoidal()[start:start + T]                                 # (T, C)
        else:
            rope = self.rotary(start, T)               # cos, sin (T, hs), applied in attention
        x, drop_cache = dropout_forward(x, config.dropout, rng=rng, train=train)
        block_caches = []
        for i in range(config.n_layer):
            last = last_only and i == config.n_layer - 1      # only the last position goes on
            x, block_cache = block_forward(x, self.block_params(i), config, rope=rope, rng=rng,
                                           train=train, kv_cache=kv_cache, layer=i,
                                           last_only=last,
                                           head_mask=None if head_mask is None else head_mask[i],
                                           head_hook=head_hook)
            block_caches.append(block_cache)                  # x: (B, 1, C) after the last
        x, ln_f_cache = norm_forward(x, p["ln_f.weight"], p.get("ln_f.bias"), config)
        out, lm_head_cache = lm_head_forward(x, self.head_weight()) if lm_head else (x, None)
        if kv_cache is not None:
            kv_cache.length += T
        return out, GPTCache(wte_cache, wpe_cache, drop_cache, block_caches, ln_f_cache,
                             lm_head_cache)                                            # (B, T, V)

    def backward(self, dout, cache):
        """Gradients of every parameter from dlogits (B, T, V): the forward pass in reverse.
        (From d(hidden) (B, T, C) if the forward pass ran with ``lm_head=False``.) After a
        forward pass with a head mask the dict also holds "head_mask", its gradient
        (n_layer, n_head)."""
        config, g = self.config, {}
        if cache.lm_head is not None:
            dx, dhead = lm_head_backward(dout, cache.lm_head)
        else:
            dx, dhead = dout, 0.0
        dx, g["ln_f.weight"], g["ln_f.bias"] = norm_backward(dx, cache.ln_f, config)
        for i in reversed(range(config.n_layer)):
            dx, block_grads = block_backward(dx, cache.h[i], config)
            g.update({f"h.{i}.{name}": grad for name, grad in block_grads.items()})
        dx = dropout_backward(dx, cache.drop)
        if cache.wpe is not None:
            g["wpe.weight"] = position_embedding_backward(dx, cache.wpe)
        g["wte.weight"] = embedding_backward(dx, cache.wte)
        if config.tie_embeddings:
            g["wte.weight"] += dhead                                   # tied: both uses add
        else:
            g["lm_head.weight"] = dhead if cache.lm_head is not None else \
                np.zeros_like(self.params["lm_head.weight"])           # the head was not used
        grads = {name: g[name] for name in self.params}
        if "h.0.head_mask" in g:
            grads["head_mask"] = np.stack([g[f"h.{i}.head_mask"] for i in range(config.n_layer)])
        return grads

    def forward(self, idx, *, return_attention=False, train=False, rng=None, kv_cache=None,
                last_only=False, head_mask=None, head_hook=None):
        """idx: int (B, T) -> logits (B, T, V); with return_attention also a list holding one
        (B, nh, T, S) array of attention weights per layer (S = T without a KV cache).
        ``kv_cache``, ``last_only``, ``head_mask`` and ``head_hook`` as for
        ``forward_with_cache``."""
        logits, cache = self.forward_with_cache(idx, train=train, rng=rng, kv_cache=kv_cache,
                                                last_only=last_only, head_mask=head_mask,
                                                head_hook=head_hook)
        return (logits, cache.att) if return_attention else logits

    def loss_and_grads(self, idx, targets, *, train=True, rng=None, head_mask=None):
        """Mean cross-entropy of targets (B, T) (-1 = ignored) and the gradient of every
        parameter: a dict with exactly the keys and shapes of ``self.params`` (and
        "head_mask" (n_layer, n_head), the gradient of the head mask, when one is given)."""
        logits, cache = self.forward_with_cache(idx, train=train, rng=rng, head_mask=head_mask)
        targets = self._check_targets(targets, logits.shape[:2])
        loss, loss_cache = cross_entropy_forward(logits, targets)
        dlogits = cross_entropy_backward(1.0, loss_cache)
        return loss, self.backward(dlogits, cache)

    def loss(self, idx, targets, *, train=False, rng=None, head_mask=None, head_hook=None):
        """Mean cross-entropy without gradients (evaluation mode, no dropout, unless train)."""
        logits = self.forward(idx, train=train, rng=rng, head_mask=head_mask, head_hook=head_hook)
        return cross_entropy_forward(logits, self._check_targets(targets, logits.shape[:2]))[0]

    def head_weight(self):
        """The output layer's weights (V, C): wte when tied, else lm_head."""
        return self.params["wte.weight" if self.config.tie_embeddings else "lm_head.weight"]

    def sinusoidal(self):
        """The fixed (block_size, C) table of sinusoidal positions, made once."""
        if self._positions is None:
            self._positions = sinusoidal_encoding(self.config.block_size, self.config.n_embd,
                                                  self.dtype)
        return self._positions

    def rotary(self, start, T):
        """The cos, sin tables (T, hs) of positions start .. start + T - 1: slices of tables made
        once for block_size positions, or new ones past them (a rolling KV cache goes on)."""
        config = self.config
        if start + T > config.block_size:
            return rope_tables(T, config.head_size, config.rope_theta, start, self.dtype)
        if self._rope is None:
            self._rope = rope_tables(config.block_size, config.head_size, config.rope_theta,
                                     0, self.dtype)
        return self._rope[0][start:start + T], self._rope[1][start:start + T]

    def new_kv_cache(self, batch_size=1, rolling=False):
        """An empty KVCache for block_size positions of every layer's n_kv_head key/value heads;
        ``rolling`` (rotary positions only) keeps going past block_size with the last block_size
        positions (``RollingKVCache``: faster, but not equal to recomputing the window)."""
        config = self.config
        if rolling and config.pos_encoding != "rope":
            raise ValueError(f"a rolling KV cache needs rotary positions (pos_encoding='rope'); "
                             f"with {config.pos_encoding!r} positions every cached key changes "
                             "when the window slides")
        cls = RollingKVCache if rolling else KVCache
        return cls(config.n_layer, batch_size, config.kv_heads, config.block_size,
                   config.head_size, self.dtype)

    # ------------------------------------------------------------------------------------------
    # Hugging Face folders (the file format itself is minillm.formats.hf)
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder, dtype="float32"):
        """Load a Hugging Face GPT-2 or Llama folder (config.json + model.safetensors, and
        vocab.json + merges.txt when present). The tokenizer, or None, is kept as
        ``model.tokenizer``."""
        config, params, tokenizer = hf.read_folder(folder, dtype)
        model = cls(config, params=params)
        model.tokenizer = tokenizer
        return model

    def save_pretrained(self, folder, tokenizer=None):
        """Write config.json + model.safetensors (+ vocab.json/merges.txt) that Transformers'
        GPT2LMHeadModel.from_pretrained reads, or LlamaForCausalLM for a Llama-style config."""
        tokenizer = tokenizer if tokenizer is not None else getattr(self, "tokenizer", None)
        hf.write_folder(folder, self.config, self.params, tokenizer)
