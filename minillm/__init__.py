"""minillm: a GPT written from scratch in NumPy, with every backward pass by hand.

    from minillm import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65), seed=0)
    loss, grads = model.loss_and_grads(idx, targets)    # idx, targets: int arrays (B, T)

The package has four rooms:

    core/         the model a student reads: layers, attention, block, config, model, optim,
                  gradcheck, sampling, lora; every layer a forward/backward pair
    tokenizers/   text <-> ids: characters, byte-pair encoding (readable and fast), GPT-2's files
    formats/      files on disk: atomic writes, safetensors, checkpoints, Hugging Face folders
    training/     the machinery: datasets and batches, the training and fine-tuning loops,
                  pictures; and cli.py, the command line built from the configs
"""
__version__ = "0.2.0"

from .core.config import GPTConfig
from .core.model import GPT
from .core.optim import AdamW, OptimConfig, clip_grad_norm, lr_schedule
from .core.sampling import generate, sample_next
from .formats.checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from .tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

__all__ = ["GPT", "GPTConfig", "CharTokenizer", "BPETokenizer", "load_tokenizer", "AdamW",
           "OptimConfig", "clip_grad_norm", "lr_schedule", "generate", "sample_next",
           "load_checkpoint", "save_checkpoint", "load_pretrained"]
