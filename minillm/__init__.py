"""minillm: a GPT written from scratch in NumPy, with every backward pass by hand."""
from .model import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
__version__ = "0.1.0"
