"""The shape of a GPT: its configuration, the names and shapes of its parameters, and the one
check that a dict of tensors has exactly those names and shapes.

Parameter names are those of GPT-2's Hugging Face checkpoint, so minillm reads beside nanoGPT,
picoGPT and llm.c. The Llama-style options keep the names and change only shapes (and which
tensors exist):

    wte.weight               (V, C)               token embedding (also the output layer if tied)
    wpe.weight               (block_size, C)      learned positions (absent: sinusoidal, rope)
    h.{i}.ln_1.weight/bias   (C,)                 block i, i = 0 .. n_layer - 1 (no bias: RMSNorm)
    h.{i}.attn.c_attn.*      (C, (nh + 2 nkv) hs) [queries | keys | values]; GPT-2: (C, 3C)
    h.{i}.attn.c_proj.*      (C, C), (C,)
    h.{i}.ln_2.weight/bias   (C,)
    h.{i}.mlp.c_fc.*         (C, I)  gelu         I = intermediate size, GPT-2: 4C
                             (C, 2I) swiglu       [gate | up]
    h.{i}.mlp.c_proj.*       (I, C), (C,)         (down)
    ln_f.weight/bias         (C,)
    lm_head.weight           (V, C)               only when the embeddings are not tied

Every ``.bias`` exists only with ``bias=True`` (the default, GPT-2).

Shape legend: V vocabulary, C channels (n_embd), nh query heads, nkv key/value heads, hs head
size (C / nh), I intermediate size of the MLP.
"""
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .fields import check_fields

DTYPES = ("float32", "float64")
POS_ENCODINGS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
# What GPTConfig.llama sets: the block of Llama 2 and 3 (and of most open models since).
LLAMA = dict(norm="rmsnorm", pos_encoding="rope", mlp="swiglu", bias=False, tie_embeddings=False)
# The fields every saved GPTConfig has had since the first checkpoint: a saved config without
# one of them is refused, not completed with a default (fields added later have defaults).
REQUIRED = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout",
            "pos_encoding", "dtype")


@dataclass
class GPTConfig:
    """The shape of a GPT. Defaults are nanoGPT's CPU "baby GPT" on Tiny Shakespeare, with
    GPT-2's block; ``GPTConfig.llama()`` gives the Llama-style block.

    >>> GPTConfig(n_embd=64, n_head=4).head_size
    16
    >>> cfg = GPTConfig.llama(n_embd=96, n_head=6)
    >>> cfg.norm, cfg.pos_encoding, cfg.mlp, cfg.kv_heads, cfg.inner_size
    ('rmsnorm', 'rope', 'swiglu', 3, 256)
    """
    vocab_size: int = field(default=65, metadata={"help": "number of token ids V", "min": 1})
    block_size: int = field(default=64, metadata={
        "help": "longest context T the model reads", "min": 1})
    n_layer: int = field(default=4, metadata={"help": "number of Transformer blocks", "min": 1})
    n_head: int = field(default=4, metadata={"help": "attention (query) heads per block", "min": 1})
    n_embd: int = field(default=128, metadata={
        "help": "channels C (a multiple of n_head)", "min": 1})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout probability while training", "min": 0.0, "below": 1.0})
    pos_encoding: str = field(default="learned", metadata={
        "help": "positions: learned (GPT-2's wpe), sinusoidal (fixed, added) or rope (rotary, "
                "applied to queries and keys)", "choices": POS_ENCODINGS})
    dtype: str = field(default="float32", metadata={
        "help": "float type of parameters and activations", "choices": DTYPES})
    norm: str = field(default="layernorm", metadata={
        "help": "normalisation: layernorm (GPT-2) or rmsnorm (Llama: no mean, no bias)",
        "choices": NORMS})
    norm_eps: float = field(default=1e-5, metadata={
        "help": "epsilon inside the normalisation's square root", "above": 0.0, "below": 1.0})
    rope_theta: float = field(default=10000.0, metadata={
        "help": "base of the rotary angles (pos_encoding rope)", "above": 1.0})
    mlp: str = field(default="gelu", metadata={
        "help": "MLP: gelu (GPT-2: c_proj(gelu(c_fc x))) or swiglu (Llama: "
                "down(silu(gate x) * up x))", "choices": MLPS})
    intermediate_size: int = field(default=0, metadata={
        "help": "hidden units I of the MLP; 0: 4C for gelu, 8C/3 rounded up to a multiple of 8 "
                "for swiglu (about the same parameters)", "min": 0})
    n_kv_head: int = field(default=0, metadata={
        "help": "key/value heads, dividing n_head (grouped-query attention; 1: multi-query); "
                "0: n_head (multi-head)", "min": 0})
    bias: bool = field(default=True, metadata={
        "help": "biases in every linear layer and LayerNorm (GPT-2); --no-bias: none"})
    tie_embeddings: bool = field(default=True, metadata={
        "help": "the output layer is wte (GPT-2); --no-tie-embeddings: its own lm_head.weight"})

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = 0                 # None and 0 both mean "as many as n_head"
        check_fields(self)                     # types, ranges, choices: from the field metadata
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): "
                             "each key/value head serves a group of query heads")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        if self.pos_encoding == "rope" and self.head_size % 2:
            raise ValueError(f"rotary positions turn pairs of channels: they need an even head "
                             f"size, got n_embd / n_head = {self.head_size}")

    @classmethod
    def llama(cls, **overrides):
        """The Llama-style block: RMSNorm, rotary positions, SwiGLU, no biases, an untied
        output layer and grouped-query attention with n_kv_head = n_head / 2 (n_head when odd);
        ``overrides`` set any field, these included.

        >>> GPTConfig.llama(n_kv_head=1).kv_heads                       # multi-query
        1
        """
        n_head = overrides.get("n_head", cls.n_head)
        values = {**LLAMA, "n_kv_head": n_head // 2 if n_head % 2 == 0 else n_head}
        return cls(**{**values, **overrides})

    @classmethod
    def from_dict(cls, data, source="model config"):
        """The GPTConfig saved as ``to_dict()`` (a checkpoint's, a config file's): complete or
        refused. Every field a checkpoint has always had (REQUIRED) must be there, unknown keys
        are refused, and errors start with ``source``.

        >>> GPTConfig.from_dict({**GPTConfig().to_dict(), "n_head": "4"}, "ckpt")
        Traceback (most recent call last):
        ...
        ValueError: ckpt: n_head must be an integer >= 1, got '4'
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected an object of settings, got "
                             f"{type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = [name for name in REQUIRED if name not in data]
        unknown = [name for name in data if name not in known]
        if missing or unknown:
            raise ValueError(f"{source}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown setting(s) {', '.join(map(repr, unknown))}"] if unknown else [])))
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @property
    def head_size(self):
        """hs = C / nh, the channels of one head."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self):
        """nkv, the number of key/value heads: n_kv_head, or n_head when that is 0."""
        return self.n_kv_head or self.n_head

    @property
    def inner_size(self):
        """I, the hidden units of the MLP: intermediate_size, or the default when that is 0:
        4C for gelu; for swiglu 8C/3 rounded up to a multiple of 8, so its three matrices hold
        about as many numbers as GELU's two (3 * 8C/3 = 2 * 4C), as Llama chooses."""
        if self.intermediate_size:
            return self.intermediate_size
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return 8 * -(-8 * self.n_embd // 24)           # ceil(8C / 3 / 8) * 8

    @property
    def qkv_sizes(self):
        """Widths of the queries, keys and values in c_attn: (nh hs, nkv hs, nkv hs)."""
        hs = self.head_size
        return self.n_head * hs, self.kv_heads * hs, self.kv_heads * hs

    def to_dict(self):
        return asdict(self)


def block_param_shapes(config):
    """Names (relative to the block) and shapes of one block's parameters, in GPT-2's order.

    >>> list(block_param_shapes(GPTConfig(n_embd=8)))[:3]
    ['ln_1.weight', 'ln_1.bias', 'attn.c_attn.weight']
    >>> block_param_shapes(GPTConfig.llama(n_embd=8, n_head=4))["attn.c_attn.weight"]
    (8, 16)
    """
    C, I = config.n_embd, config.inner_size
    norm_bias = config.bias and config.norm == "layernorm"
    fc = 2 * I if config.mlp == "swiglu" else I          # swiglu: [gate | up]
    shapes = {}

    def add(name, weight, with_bias):
        shapes[name + ".weight"] = weight
        if with_bias:
            shapes[name + ".bias"] = weight[-1:]

    add("ln_1", (C,), norm_bias)
    add("attn.c_attn", (C, sum(config.qkv_sizes)), config.bias)
    add("attn.c_proj", (C, C), config.bias)
    add("ln_2", (C,), norm_bias)
    add("mlp.c_fc", (C, fc), config.bias)
    add("mlp.c_proj", (I, C), config.bias)
    return shapes


def param_shapes(config):
    """Names and shapes of every parameter, in GPT-2's Hugging Face naming and order.

    >>> shapes = param_shapes(GPTConfig(vocab_size=10, n_layer=1, n_embd=8, n_head=2))
    >>> shapes["wte.weight"], shapes["h.0.mlp.c_fc.weight"], len(shapes)
    ((10, 8), (8, 32), 16)
    >>> len(param_shapes(GPTConfig.llama(vocab_size=10, n_layer=1, n_embd=8, n_head=2)))
    9
    """
    C = config.n_embd
    shapes = {"wte.weight": (config.vocab_size, C)}
    if config.pos_encoding == "learned":
        shapes["wpe.weight"] = (config.block_size, C)
    block = block_param_shapes(config)
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    shapes["ln_f.weight"] = (C,)
    if config.bias and config.norm == "layernorm":
        shapes["ln_f.bias"] = (C,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, C)
    return shapes


def check_tensors(tensors, expected, source):
    """Raise a ValueError naming every tensor of ``tensors`` that ``expected`` ({name: shape})
    lacks or does not know, the first one of the wrong shape, and any that does not hold floats
    (an int or bool tensor is refused, not cast) or holds NaN or infinity.

    ``source`` says where the tensors come from (a file, "adapters", ...) and starts the message.

    >>> check_tensors({"w": np.zeros((2, 3))}, {"w": (3, 2)}, "example")
    Traceback (most recent call last):
    ...
    ValueError: example: tensor 'w' has shape (2, 3), expected (3, 2)
    """
    missing = [f"{name} {tuple(shape)}" for name, shape in expected.items() if name not in tensors]
    unknown = [name for name in tensors if name not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
        if unknown:
            parts.append(f"unexpected tensor(s): {', '.join(unknown[:8])}"
                         + (" ..." if len(unknown) > 8 else ""))
        raise ValueError(f"{source}: {'; '.join(parts)}")
    for name, shape in expected.items():
        array = tensors[name]
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}, "
                             f"expected {tuple(shape)}")
        if np.asarray(array).dtype.kind != "f":
            raise ValueError(f"{source}: tensor {name!r} has dtype {array.dtype}, expected floats")
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: tensor {name!r} holds NaN or infinite values")
