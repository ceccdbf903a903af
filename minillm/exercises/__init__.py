"""Exercises: re-implement a minillm function, then ``check`` it against minillm's own.

    from minillm.exercises import check
    check("linear_backward", linear_backward)   # prints one line per output, returns a result

``EXERCISES`` maps every exercise name to an ``Exercise``: what it tests (``what``), the
minillm function it re-implements (``reference``, whose signature the student's function
has), its cases and its planted mistakes. The notebooks in the repository's ``exercises/``
folder hold one stub per exercise; ``python -m minillm grade`` runs handed-in notebooks and
tabulates their checks.

The machinery: registry.py (Exercise, the registry, @mistake), checker.py (check), running.py
(time limit, the student's line), values.py (comparing outputs), grade.py (the grader). The
exercises are defined by topic, in the order of the notebooks:

    tokenization.py   byte-pair encoding: get_stats, merge, train, encode, decode
    embeddings.py     the embedding's backward with repeated ids, positions
    attention.py      softmax, the causal mask, attention, heads split and merged
    block.py          LayerNorm, GELU, the block forward and its backward through residuals
    backprop.py       the backward passes: linear, softmax, cross-entropy, LayerNorm, GELU, SDPA
    optim.py          one AdamW step, the learning-rate schedule, gradient clipping
    training.py       batches, the loss, dropout, the tied embedding and the model's backward
    generation.py     sampling filters, one KV-cache decode step, the generation loop
    formats.py        GPT-2's byte-to-character table, reading a safetensors file
    lora.py           the LoRA layer forward and backward, the merged weight's backward
    classify.py       pooling a padded batch's hidden states for a classifier (notebook 14)
    llama.py          RMSNorm, SiLU, SwiGLU, the rotary tables and rotation, grouped-query
                      attention: each forward and backward (notebook 16)

>>> len(EXERCISES) >= 30
True
"""
from .registry import EXERCISES, LOG_ENV, Case, CheckResult, Exercise, Mistake, exercise, mistake
from .checker import check
from . import tokenization, embeddings, attention, block, backprop  # noqa: F401 (registering)
from . import optim, training, generation, formats, lora, classify, llama  # noqa: F401

__all__ = ["EXERCISES", "Case", "CheckResult", "Exercise", "Mistake", "check", "exercise",
           "mistake", "LOG_ENV"]
