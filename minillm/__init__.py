"""minillm: a GPT written from scratch in NumPy, with every backward pass by hand.

    from minillm import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65), seed=0)
    loss, grads = model.loss_and_grads(idx, targets)    # idx, targets: int arrays (B, T)
"""
from .bpe import BPETokenizer
from .checkpoint import load_checkpoint, save_checkpoint
from .generate import generate, sample_next
from .model import GPT, GPTConfig
from .optim import AdamW, OptimConfig, clip_grad_norm, lr_schedule
from .pretrained import load_pretrained, save_pretrained
from .tokenizer import CharTokenizer, load_tokenizer

__all__ = ["GPT", "GPTConfig", "CharTokenizer", "BPETokenizer", "load_tokenizer", "AdamW",
           "OptimConfig", "clip_grad_norm", "lr_schedule", "generate", "sample_next",
           "load_checkpoint", "save_checkpoint", "load_pretrained", "save_pretrained"]
__version__ = "0.1.0"
