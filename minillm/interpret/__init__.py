"""Looking inside a trained GPT with causal methods: every activation is a plain NumPy array.

    logit_lens(model, idx)                  what the residual stream predicts after each block
    head_ablation(model, idx, targets)      the loss increase when each head is removed
    head_importance(model, idx, targets)    the gradient of the loss with respect to a head mask
    head_patching(model, clean, corrupted, targets)   one head's output from a clean run put
                                            into a corrupted one: how much of the loss it restores
    induction_score(model, rng)             on random tokens repeated twice: attention to the
                                            token after the previous occurrence, loss on the repeat

Each is one line on any model with minillm's parameters (lens.py, heads.py, induction.py).
"""
from .heads import (PatchingResult, head_ablation, head_importance, head_patching,  # noqa: F401
                    patch_heads, record_heads)
from .induction import (InductionScore, induction_attention, induction_score,  # noqa: F401
                        previous_occurrence, previous_token_score, repeated_tokens)
from .lens import logit_lens, residual_stream  # noqa: F401
