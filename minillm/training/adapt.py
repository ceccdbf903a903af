"""What every fine-tuning run starts with: a vocabulary that covers the new data, and the
weights that learn.

    vocabulary  a character the model's CharTokenizer lacks is an error listing them, unless
                extend: it is appended (new id V, V + 1, ...) with a new row of wte each,
                drawn N(0, 0.02) (``add_token_rows``); old ids and rows are unchanged
    learner     full: a copy of every weight (the base model is only read)
                LoRA: the base frozen, adapters A (in, r), B (r, out) next to the chosen weights

Used by ``finetune`` for every task (text, classification, instructions).
"""
from dataclasses import replace

import numpy as np

from ..core.lora import LoRA, LoRAConfig
from ..core.model import GPT
from ..tokenizers import CharTokenizer


def list_chars(chars, limit=20):
    """"'é', 'ß', '€'": the characters' reprs, at most ``limit`` of them, then "and N more".

    >>> list_chars(["a", "b", "c"], limit=2)
    "'a', 'b' and 1 more"
    """
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def add_token_rows(model, n_new, rng):
    """A new GPT with ``n_new`` rows appended to the token embedding wte (V, C) -> (V + n, C)
    (and to an untied output layer lm_head, of the same shape).

    The rows are drawn N(0, 0.02) (GPT-2's initialisation) in float64, then cast to the model's
    dtype; old rows, and every other array, are the model's own (``model`` is not changed).

    >>> from minillm import GPTConfig
    >>> m = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    >>> add_token_rows(m, 2, np.random.default_rng(0)).params["wte.weight"].shape
    (7, 4)
    """
    params = dict(model.params)
    for name in ("wte.weight", "lm_head.weight"):
        if name in params:
            table = params[name]
            rows = rng.normal(0.0, 0.02, size=(n_new, table.shape[1])).astype(table.dtype)
            params[name] = np.concatenate([table, rows])
    config = replace(model.config, vocab_size=model.config.vocab_size + n_new)
    return GPT(config, params=params)


def fit_vocabulary(model, tokenizer, text, extend, rng, what="the new text has",
                   other="remove them from the text"):
    """(model, tokenizer, added characters) able to encode ``text``, or a ValueError listing
    the characters a character model lacks when ``extend`` is False (``what`` begins the
    message, "the new text has"; ``other`` is the way out besides --extend-vocab)."""
    if not isinstance(tokenizer, CharTokenizer):
        if extend:
            raise ValueError("--extend-vocab works for character models only; a GPT-2 (byte-level "
                             "BPE) tokenizer can already encode any text")
        return model, tokenizer, []
    missing = tokenizer.missing(text)
    if missing and not extend:
        raise ValueError(f"{what} {len(missing)} characters the model's vocabulary "
                         f"lacks: {list_chars(missing)}; pass --extend-vocab to add them (or "
                         f"{other})")
    if not missing:
        return model, tokenizer, []
    tokenizer = tokenizer.extend(missing)              # old ids unchanged, new ones at the end
    n_new = tokenizer.vocab_size - model.config.vocab_size
    return (add_token_rows(model, n_new, rng) if n_new > 0 else model), tokenizer, missing


def lora_config(config):
    """The LoRAConfig of a FinetuneConfig with lora_rank > 0 (ValueError on bad settings)."""
    return LoRAConfig(rank=config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets)


def learner(model, config, log, added=()):
    """(trained, params, lora, trainable, total): what a language-model loss trains. LoRA
    (config.lora_rank > 0): trained is a LoRA around the frozen ``model``, params its adapters;
    full: trained is a GPT holding a copy of every weight, params its dict; trainable and total
    count parameters (also logged)."""
    if config.lora_rank:
        lora = LoRA(model, lora_config(config), rng=np.random.default_rng((config.seed, 2)))
        trainable, total = lora.num_trainable(), lora.num_total()
        if added:
            log(f"note: LoRA trains the adapters only, so the {len(added)} new embedding rows keep "
                "their random values; full fine-tuning (no --lora-rank) learns them")
        how = (f", LoRA rank {lora.config.rank} alpha {lora.config.alpha:g} on "
               f"{', '.join(lora.config.targets)}")
        trained, params = lora, lora.adapters                  # AdamW sees A and B only
    else:
        lora, how = None, ""
        trained = GPT(model.config, seed=config.seed,
                      params={k: v.copy() for k, v in model.params.items()})   # base untouched
        params = trained.params
        trainable = total = trained.num_params()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        + how)
    return trained, params, lora, trainable, total
