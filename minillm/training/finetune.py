"""Fine-tuning: continue training a saved model on a new text, fully or through LoRA adapters;
or fine-tune it for a task: a text classifier, or an instruction follower.

    base  = a minillm checkpoint folder, or a GPT-2 or Llama folder (config.json +
            model.safetensors + vocab.json + merges.txt, the Hugging Face layout)
    task  = text      more language modelling on a new text (the default)
            classify  a classification head on the hidden states (``classify.py``): labelled
                      texts (a TSV, CSV or JSONL file, or the dataset "sentiment"), split
                      train / validation / test stratified by class
            instruct  Alpaca-style records (a JSONL file, or the generated "tasks") in one
                      prompt template, the loss on the response only (``instruct.py``)
    ids   = tokenizer(data)             a character the vocabulary lacks is an error, unless
                                        --extend-vocab appends it (one new row of wte each),
                                        or (classify, instruct) --map-chars replaces it
    full: every weight W is trained (on a copy: the base files are only read)
    LoRA: W stays frozen, only A (in, r) and B (r, out) are trained:
            out = x @ W + (alpha / r) * (x @ A) @ B
          and at the end W_eff = W + (alpha / r) * A @ B is saved as an ordinary checkpoint
    classify also: the head alone (--trainable head), or the head and the last k blocks (top)

The loop is ``train_loop``, the same as ``minillm train``'s; only the defaults differ (see
FinetuneConfig): the weights are already good, so the steps are smaller and the run is short.

    out_dir/checkpoint.safetensors    the last state of the fine-tuned model (LoRA: merged),
                                      loads like any run; a classifier's head and label names,
                                      an instruction model's template, are in it too
    out_dir/best.safetensors          the model at the lowest validation loss (LoRA: merged)
    out_dir/tokenizer.json            its tokenizer (extended if characters were added)
    out_dir/adapters.safetensors      LoRA only: A and B alone, written at every save
    out_dir/metrics.json              classify: test and validation metrics of the last state;
                                      instruct: exact match on validation records
    out_dir/loss.png                  written by the command line at the end (and, classify,
                                      confusion.png, the test confusion matrix)

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

from ..core.classifier import POOLS
from ..core.fields import check_fields
from ..core.lora import LoRA, LoRAConfig
from ..core.model import GPT
from ..core.optim import AdamW, OptimConfig
from ..formats.checkpoint import BEST, TOKENIZER, load_model, run_files, save_checkpoint
from ..formats.files import lock_folder
from ..tokenizers import CharTokenizer
from .adapt import add_token_rows, fit_vocabulary, learner, list_chars, lora_config  # noqa: F401
from .classify import TRAINABLE, finetune_classifier
from .data import load_text
from .instruct import finetune_instruct
from .labelled import KEEP
from .parallel import grad_accum_field, workers_field
from .train import check_memory, encode_splits, new_state, train_loop

ADAPTERS = "adapters.safetensors"
SCHEDULE = ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters")   # set by FinetuneConfig
TASKS = ("text", "classify", "instruct")


@dataclass
class FinetuneConfig:
    """What to start from, what to train on, and how gently (one CLI flag per field)."""
    task: str = field(default="text", metadata={
        "help": "text: more language modelling on --data; classify: a classifier of labelled "
                "texts (a .tsv/.txt file of text<TAB>label lines, .csv with text,label columns, "
                ".jsonl with text and label, or the dataset sentiment); instruct: follow "
                "instructions (a .jsonl file of Alpaca records instruction, input, output, or "
                "the generated dataset tasks)", "choices": TASKS})
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
    trainable: str = field(default="all", metadata={
        "help": "what learns: all (every weight); lora (LoRA adapters, needs --lora-rank); "
                "classify only: top (the last --top-blocks blocks and ln_f, the rest frozen) or "
                "head (nothing of the model); a classifier's head always learns",
        "choices": TRAINABLE})
    top_blocks: int = field(default=1, metadata={
        "help": "classify, --trainable top: how many of the last blocks learn", "min": 1})
    pool: str = field(default="mean", metadata={
        "help": "classify: what the head reads, the mean of the hidden states of a text's "
                "tokens, or the last token's (for a review, mostly a '.'; notebook 14 measures "
                "both)", "choices": POOLS})
    keep: str = field(default="last", metadata={
        "help": "classify: a text longer than the context keeps its last or its first "
                "block_size tokens", "choices": KEEP})
    head_lr: float = field(default=3e-3, metadata={
        "help": "classify: peak learning rate of the head, which starts at zero (it follows "
                "the same schedule, scaled)", "above": 0.0})
    val_frac: float = field(default=0.1, metadata={
        "help": "classify, instruct: share held out for validation (classify: of each class)",
        "above": 0.0, "below": 1.0})
    test_frac: float = field(default=0.1, metadata={
        "help": "classify: share of each class held out for the test at the end",
        "above": 0.0, "below": 1.0})
    split_seed: int = field(default=0, metadata={
        "help": "classify, instruct: seed of the train / validation / test split (its own, so "
                "that runs with different --seed share one test set)", "min": 0})
    map_chars: bool = field(default=False, metadata={
        "help": "classify, instruct, character models: replace characters the vocabulary "
                "lacks instead of refusing them (digits -> '3', quotes -> \"'\", brackets -> "
                "',', accents dropped, anything else -> ' '; minillm/training/labelled.py)"})
    mask_prompt: bool = field(default=True, metadata={
        "help": "instruct: train on the response tokens only (targets -1 on the prompt); "
                "--no-mask-prompt trains on every token"})
    lora_rank: int = field(default=0, metadata={
        "help": "rank r of LoRA adapters (same as --trainable lora); 0 = no LoRA", "min": 0})
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
    head: dict = None   # classify: {"classifier.weight": (C, K), "classifier.bias": (K,)}
    task: dict = None   # classify, instruct: what the checkpoint says about the task
    metrics: dict = None  # classify: test and val metrics; instruct: exact match on val


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
    if config.trainable == "lora" and not config.lora_rank:
        raise ValueError("--trainable lora needs --lora-rank R (e.g. 8)")
    if config.lora_rank and config.trainable not in ("all", "lora"):
        raise ValueError(f"--lora-rank trains LoRA adapters; it does not go with --trainable "
                         f"{config.trainable}")
    if config.trainable in ("top", "head") and config.task != "classify":
        raise ValueError(f"--trainable {config.trainable} is for --task classify (a head on "
                         "the hidden states); use all or lora")
    if config.task != "text" and config.watch_data:
        raise ValueError("--watch-data is for --task text")
    if config.task == "classify" and config.export_pretrained:
        raise ValueError("--export-pretrained writes a language model; a classifier's head has "
                         "no place in a Hugging Face GPT-2 folder")
    if config.task == "classify" and config.val_frac + config.test_frac >= 1.0:
        raise ValueError(f"--val-frac {config.val_frac} and --test-frac {config.test_frac} "
                         "leave nothing to train on")
    init = Path(config.init_from).expanduser()
    init_dir = (init.parent if init.is_file() else init).resolve()
    for flag, folder in (("--out-dir", config.out_dir),
                         ("--export-pretrained", config.export_pretrained)):
        if folder and Path(folder).expanduser().resolve() == init_dir:
            raise ValueError(f"{flag} {folder} is the folder of --init-from; fine-tuning never "
                             f"modifies the original model, so give a new folder")


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
        model, tokenizer, kind = load_model(config.init_from)
        log(f"base: {config.init_from} "
            f"({'minillm checkpoint' if kind == 'minillm' else kind + ' folder'}), "
            f"{model.num_params():,} parameters, vocab {model.config.vocab_size}")
        if config.export_pretrained and not hasattr(tokenizer, "to_gpt2"):
            raise ValueError("--export-pretrained writes a Hugging Face folder, whose vocab.json "
                             "+ merges.txt describe a BPE tokenizer; a character model cannot be "
                             "exported that way")
        if config.task == "text":
            return _finetune(config, optim_config, log, progress, out_dir, model, tokenizer)
        run = finetune_classifier if config.task == "classify" else finetune_instruct
        result = FinetuneResult(**run(config, optim_config, model, tokenizer, out_dir, log,
                                      progress))
        if config.export_pretrained:
            result.model.save_pretrained(config.export_pretrained, result.tokenizer)
            log(f"exported a Hugging Face folder to {config.export_pretrained}")
        return result


def _finetune(config, optim_config, log, progress, out_dir, model, tokenizer):
    # 1. the new text encoded with the base model's tokenizer (all checked before training)
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
    trained, params, lora, trainable, total = learner(model, config, log, added)
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
