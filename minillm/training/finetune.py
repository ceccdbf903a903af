"""Fine-tuning: continue training a saved model on a new text, fully or through LoRA adapters.

    base  = a minillm checkpoint folder, or a GPT-2 or Llama folder (config.json +
            model.safetensors + vocab.json + merges.txt, the Hugging Face layout)
    ids   = tokenizer(new text)         a character the vocabulary lacks is an error, unless
                                        --extend-vocab appends it (one new row of wte each)
    full: every weight W is trained (on a copy: the base files are only read)
    LoRA: W stays frozen, only A (in, r) and B (r, out) are trained:
            out = x @ W + (alpha / r) * (x @ A) @ B
          and at the end W_eff = W + (alpha / r) * A @ B is saved as an ordinary checkpoint

The loop is ``train_loop``, the same as ``minillm train``'s; only the defaults differ (see
FinetuneConfig): the weights are already good, so the steps are smaller and the run is short.

    out_dir/checkpoint.safetensors    the last state of the fine-tuned model (LoRA: merged),
                                      loads like any run
    out_dir/best.safetensors          the model at the lowest validation loss (LoRA: merged)
    out_dir/tokenizer.json            its tokenizer (extended if characters were added)
    out_dir/adapters.safetensors      LoRA only: A and B alone, written at every save
    out_dir/loss.png                  written by the command line at the end

The run holds out_dir (a second run into it is refused) and refuses an out_dir that already
holds a run unless --overwrite is given; nothing is written before the first save.

>>> config = FinetuneConfig(init_from="out", data="new.txt", out_dir="out-ft", lora_rank=4)
>>> result = finetune(config)                      # doctest: +SKIP
>>> result.trainable, result.total                 # doctest: +SKIP
"""
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.fields import check_fields
from ..core.lora import LoRA, LoRAConfig
from ..core.model import GPT
from ..core.optim import AdamW, OptimConfig
from ..formats.checkpoint import BEST, TOKENIZER, load_model, run_files, save_checkpoint
from ..formats.files import lock_folder
from ..tokenizers import CharTokenizer
from .data import load_text
from .parallel import grad_accum_field, workers_field
from .train import check_memory, encode_splits, new_state, train_loop

ADAPTERS = "adapters.safetensors"
SCHEDULE = ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters")   # set by FinetuneConfig


@dataclass
class FinetuneConfig:
    """What to start from, what to train on, and how gently (one CLI flag per field)."""
    init_from: str = field(default=None, metadata={
        "help": "the model to start from: a minillm checkpoint folder, or a GPT-2 or Llama "
                "folder in the Hugging Face layout (config.json, model.safetensors, vocab.json, "
                "merges.txt); only read, never written"})
    data: str = field(default=None, metadata={
        "help": "the new text: a UTF-8 file or a dataset name"})
    out_dir: str = field(default=None, metadata={
        "help": "folder for the fine-tuned checkpoint; must differ from --init-from"})
    overwrite: bool = field(default=False, metadata={
        "help": "fine-tune into an out_dir that already holds a run (its files are replaced as "
                "the new run saves)"})
    max_iters: int = field(default=300, metadata={
        "help": "training iterations; a few hundred, because the model only has to adapt and "
                "longer runs mostly overwrite what it knew", "min": 1})
    batch_size: int = field(default=12, metadata={"help": "sequences per batch", "min": 1})
    learning_rate: float = field(default=3e-4, metadata={
        "help": "peak learning rate, a third of train's 1e-3: the weights are already good and "
                "big steps would wreck them (LoRA adapters start at zero and want ~10x more, "
                "e.g. 3e-3)", "above": 0.0})
    min_lr: float = field(default=3e-5, metadata={
        "help": "learning rate at the end of the cosine decay, which spans all max_iters",
        "min": 0.0})
    warmup_iters: int = field(default=20, metadata={
        "help": "iterations of linear warmup: AdamW starts without moment estimates, so its "
                "first steps are noisy; 20 is enough for them to settle (capped at max_iters)",
        "min": 0})
    eval_interval: int = field(default=50, metadata={
        "help": "evaluate (and save) every this many iterations (6 points on a 300-iteration "
                "curve)", "min": 1})
    eval_iters: int = field(default=20, metadata={"help": "batches per evaluation", "min": 1})
    log_interval: int = field(default=10, metadata={
        "help": "progress update every this many iterations", "min": 1})
    seed: int = field(default=1337, metadata={
        "help": "seed of batches, dropout, new rows and adapters", "min": 0})
    extend_vocab: bool = field(default=False, metadata={
        "help": "character models: append the new text's unknown characters to the vocabulary "
                "(new rows of wte ~ N(0, 0.02); existing ids unchanged)"})
    lora_rank: int = field(default=0, metadata={
        "help": "rank r of LoRA adapters; 0 = full fine-tuning of every weight", "min": 0})
    lora_alpha: float = field(default=16.0, metadata={
        "help": "LoRA scale numerator: updates are scaled by alpha / r", "above": 0.0})
    lora_targets: str = field(default=",".join(LoRAConfig().targets), metadata={
        "help": "comma-separated projections that get adapters: attn.c_attn, attn.c_proj, "
                "mlp.c_fc, mlp.c_proj"})
    watch_data: str = field(default=None, metadata={
        "help": "another text (e.g. the base model's training text) whose loss on its last tenth "
                "is measured at every evaluation: how much of it the model forgets"})
    export_pretrained: str = field(default=None, metadata={
        "help": "also save the result as a Hugging Face folder here (GPT-2 or Llama, BPE "
                "models only)"})
    sample_tokens: int = field(default=200, metadata={
        "help": "tokens sampled at the end (0: none)", "min": 0})
    workers: int = workers_field()
    grad_accum_steps: int = grad_accum_field()

    def __post_init__(self):
        check_fields(self)


@dataclass
class FinetuneResult:
    """What ``finetune`` returns."""
    model: GPT          # the fine-tuned model (LoRA: merged into one plain GPT)
    tokenizer: object   # CharTokenizer (extended if characters were added) or BPETokenizer
    state: dict         # "history" (loss curves), "iter", "best_val", ...
    base: GPT           # the starting model (with the new rows if any); its arrays are unchanged
    lora: LoRA = None   # the adapters, for a LoRA run
    trainable: int = 0  # parameters the optimizer updated
    total: int = 0      # parameters of the model (LoRA: base + adapters)
    added: list = None  # characters appended to the vocabulary
    seconds: float = 0.0


def check_config(config):
    """ValueError naming the first setting that cannot work (before anything is loaded)."""
    # (each field's own type and range are checked by FinetuneConfig itself)
    for name in ("init_from", "data", "out_dir"):
        if not getattr(config, name):
            raise ValueError(f"--{name.replace('_', '-')} is required")
    if config.min_lr > config.learning_rate:
        raise ValueError(f"need min_lr <= learning_rate, got {config.min_lr} and "
                         f"{config.learning_rate}")
    if config.lora_rank:
        lora_config(config)                                       # checks the LoRA settings
    init = Path(config.init_from).expanduser()
    init_dir = (init.parent if init.is_file() else init).resolve()
    for flag, folder in (("--out-dir", config.out_dir),
                         ("--export-pretrained", config.export_pretrained)):
        if folder and Path(folder).expanduser().resolve() == init_dir:
            raise ValueError(f"{flag} {folder} is the folder of --init-from; fine-tuning never "
                             f"modifies the original model, so give a new folder")


def lora_config(config):
    """The LoRAConfig of a FinetuneConfig with lora_rank > 0 (ValueError on bad settings)."""
    return LoRAConfig(rank=config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets)


def schedule_config(config, optim_config=None):
    """``optim_config`` (default OptimConfig()) with the schedule of the FinetuneConfig
    ``config``: warmup of at most max_iters, then cosine decay to min_lr at max_iters; betas,
    eps, weight decay and clipping stay as they are.

    >>> schedule_config(FinetuneConfig(max_iters=10)).warmup_iters
    10
    """
    return replace(optim_config or OptimConfig(), learning_rate=config.learning_rate,
                   min_lr=config.min_lr, warmup_iters=min(config.warmup_iters, config.max_iters),
                   lr_decay_iters=config.max_iters)


def list_chars(chars, limit=20):
    """"'é', 'ß', '€'": the characters' reprs, at most ``limit`` of them, then "and N more"."""
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


def fit_vocabulary(model, tokenizer, text, extend, rng):
    """(model, tokenizer, added characters) able to encode ``text``, or a ValueError listing
    the characters a character model lacks when ``extend`` is False."""
    if not isinstance(tokenizer, CharTokenizer):
        if extend:
            raise ValueError("--extend-vocab works for character models only; a GPT-2 (byte-level "
                             "BPE) tokenizer can already encode any text")
        return model, tokenizer, []
    missing = tokenizer.missing(text)
    if missing and not extend:
        raise ValueError(f"the new text has {len(missing)} characters the model's vocabulary "
                         f"lacks: {list_chars(missing)}; pass --extend-vocab to add them (or "
                         f"remove them from the text)")
    if not missing:
        return model, tokenizer, []
    tokenizer = tokenizer.extend(missing)              # old ids unchanged, new ones at the end
    n_new = tokenizer.vocab_size - model.config.vocab_size
    return (add_token_rows(model, n_new, rng) if n_new > 0 else model), tokenizer, missing


def encode_checked(text, tokenizer, description, block_size):
    """{"train", "val"} token arrays (90% / 10%), checked to hold at least one batch window."""
    return encode_splits(text, tokenizer, block_size, description)


def finetune(config, optim_config=None, log=print, progress=None):
    """Fine-tune ``config.init_from`` on ``config.data`` into ``config.out_dir``; returns a
    FinetuneResult.

    ``optim_config`` gives the optimizer settings other than the schedule (see
    ``schedule_config``); ``progress`` replaces the training loop's progress line (see
    ``train.Progress``).
    """
    check_config(config)
    optim_config = schedule_config(config, optim_config)
    with lock_folder(config.out_dir) as out_dir:
        found = run_files(out_dir)
        if found and not config.overwrite:
            raise ValueError(f"{out_dir} already holds a run ({', '.join(found)}); give "
                             "--overwrite to replace it, or another --out-dir")
        return _finetune(config, optim_config, log, progress, out_dir)


def _finetune(config, optim_config, log, progress, out_dir):
    # 1. the base model, and the new text encoded with its tokenizer (all checked before training)
    model, tokenizer, kind = load_model(config.init_from)
    log(f"base: {config.init_from} "
        f"({'minillm checkpoint' if kind == 'minillm' else kind + ' folder'}), "
        f"{model.num_params():,} parameters, vocab {model.config.vocab_size}")
    if config.export_pretrained and not hasattr(tokenizer, "to_gpt2"):
        raise ValueError("--export-pretrained writes a Hugging Face folder, whose vocab.json + "
                         "merges.txt describe a BPE tokenizer; a character model cannot be "
                         "exported that way")
    try:
        text, description = load_text(config.data)
    except IsADirectoryError as e:
        raise ValueError(str(e)) from None
    model, tokenizer, added = fit_vocabulary(model, tokenizer, text, config.extend_vocab,
                                             np.random.default_rng((config.seed, 1)))
    if added:
        log(f"vocabulary: added {len(added)} characters ({list_chars(added)}) as ids "
            f"{tokenizer.vocab_size - len(added)}..{tokenizer.vocab_size - 1}")
    T = model.config.block_size
    splits = encode_checked(text, tokenizer, description, T)
    if config.watch_data:
        watch_text, watch_description = load_text(config.watch_data)
        if isinstance(tokenizer, CharTokenizer) and tokenizer.missing(watch_text):
            raise ValueError(f"the --watch-data text has characters the vocabulary lacks: "
                             f"{list_chars(tokenizer.missing(watch_text))}")
        splits["watch"] = encode_checked(watch_text, tokenizer, watch_description, T)["val"]
    log(f"data: {description}, {len(splits['train']):,} train and {len(splits['val']):,} val "
        "tokens")

    # 2. what is trained: adapters A and B next to frozen weights, or a copy of every weight
    check_memory(model.config, config.batch_size, copies=2 if config.lora_rank else 5,
                 what="fine-tuning")                # LoRA: base + merged; full: base + 4 copies
    if config.lora_rank:
        lora = LoRA(model, lora_config(config), rng=np.random.default_rng((config.seed, 2)))
        trained, params = lora, lora.adapters                  # AdamW sees A and B only
        trainable, total = lora.num_trainable(), lora.num_total()
        if added:
            log(f"note: LoRA trains the adapters only, so the {len(added)} new embedding rows keep "
                "their random values; full fine-tuning (no --lora-rank) learns them")
        how = (f", LoRA rank {lora.config.rank} alpha {lora.config.alpha:g} on "
               f"{', '.join(lora.config.targets)}")
    else:
        lora, how = None, ""
        trained = GPT(model.config, seed=config.seed,
                      params={k: v.copy() for k, v in model.params.items()})   # base untouched
        params = trained.params
        trainable = total = trained.num_params()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%){how}")
    # 3. the loop of `minillm train`, saving into out_dir (never into init_from)
    optimizer = AdamW.from_config(params, optim_config)
    state = new_state(config.seed)
    configs = {"finetune": asdict(config), "optim": asdict(optim_config),
               "lora": asdict(lora.config) if lora else None, "added_chars": added}

    def current():                     # the model being trained, as a plain GPT
        return lora.merge() if lora is not None else trained

    def save(state):                   # the last state (LoRA: merged, and the adapters alone)
        if lora is not None:
            lora.save(out_dir / ADAPTERS)
        save_checkpoint(out_dir, current(), tokenizer, state={**state, "configs": configs})
        tokenizer.save(out_dir / TOKENIZER)

    def save_best(state):              # the model at the lowest validation loss
        save_checkpoint(out_dir, current(), tokenizer, state={**state, "configs": configs},
                        name=BEST)

    t0 = time.perf_counter()
    state = train_loop(trained, optimizer, splits, config, optim_config, state, save,
                       progress=progress, block_size=T, save_best=save_best)
    seconds = time.perf_counter() - t0
    # 4. the result: LoRA's W + (alpha / r) A @ B merged into a plain GPT, loadable like any run
    final = current()
    if config.export_pretrained:
        final.save_pretrained(config.export_pretrained, tokenizer)
        log(f"exported a Hugging Face folder to {config.export_pretrained}")
    return FinetuneResult(final, tokenizer, state, model, lora, trainable, total, added, seconds)
