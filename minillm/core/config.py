"""The shape of a GPT: its configuration, the names and shapes of its parameters, and the one
check that a dict of tensors has exactly those names and shapes.

Parameter names are those of GPT-2's Hugging Face checkpoint, so minillm reads beside nanoGPT,
picoGPT and llm.c:

    wte.weight               (V, C)            token embedding (also the output layer: tied)
    wpe.weight               (block_size, C)   learned positions (absent with sinusoidal ones)
    h.{i}.ln_1.weight/bias   (C,)              block i, i = 0 .. n_layer - 1
    h.{i}.attn.c_attn.*      (C, 3C), (3C,)    queries, keys, values in one matrix
    h.{i}.attn.c_proj.*      (C, C), (C,)
    h.{i}.ln_2.weight/bias   (C,)
    h.{i}.mlp.c_fc.*         (C, 4C), (4C,)
    h.{i}.mlp.c_proj.*       (4C, C), (C,)
    ln_f.weight/bias         (C,)

Shape legend: V vocabulary, C channels (n_embd).
"""
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .fields import check_fields

DTYPES = ("float32", "float64")
POS_ENCODINGS = ("learned", "sinusoidal")
# The fields every saved GPTConfig has had since the first checkpoint: a saved config without
# one of them is refused, not completed with a default (fields added later have defaults).
REQUIRED = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout",
            "pos_encoding", "dtype")


@dataclass
class GPTConfig:
    """The shape of a GPT. Defaults are nanoGPT's CPU "baby GPT" on Tiny Shakespeare.

    >>> GPTConfig(n_embd=64, n_head=4).head_size
    16
    """
    vocab_size: int = field(default=65, metadata={"help": "number of token ids V", "min": 1})
    block_size: int = field(default=64, metadata={
        "help": "longest context T the model reads", "min": 1})
    n_layer: int = field(default=4, metadata={"help": "number of Transformer blocks", "min": 1})
    n_head: int = field(default=4, metadata={"help": "attention heads per block", "min": 1})
    n_embd: int = field(default=128, metadata={
        "help": "channels C (a multiple of n_head)", "min": 1})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout probability while training", "min": 0.0, "below": 1.0})
    pos_encoding: str = field(default="learned", metadata={
        "help": "positions: learned (GPT-2's wpe) or sinusoidal (fixed)", "choices": POS_ENCODINGS})
    dtype: str = field(default="float32", metadata={
        "help": "float type of parameters and activations", "choices": DTYPES})

    def __post_init__(self):
        check_fields(self)                 # types and ranges, from the annotations and metadata
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")

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

    def to_dict(self):
        return asdict(self)


def block_param_shapes(config):
    """Names (relative to the block) and shapes of one block's parameters, in GPT-2's order.

    >>> list(block_param_shapes(GPTConfig(n_embd=8)))[:3]
    ['ln_1.weight', 'ln_1.bias', 'attn.c_attn.weight']
    """
    C = config.n_embd
    return {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
    }


def param_shapes(config):
    """Names and shapes of every parameter, in GPT-2's Hugging Face naming and order.

    >>> shapes = param_shapes(GPTConfig(vocab_size=10, n_layer=1, n_embd=8, n_head=2))
    >>> shapes["wte.weight"], shapes["h.0.mlp.c_fc.weight"], len(shapes)
    ((10, 8), (8, 32), 16)
    """
    C = config.n_embd
    shapes = {"wte.weight": (config.vocab_size, C)}
    if config.pos_encoding == "learned":
        shapes["wpe.weight"] = (config.block_size, C)
    block = block_param_shapes(config)
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
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
