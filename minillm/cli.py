"""The command line: ``python -m minillm train | sample | finetune | classify | eval | tasks |
export | grade``.

Options are built from the dataclass configs (GPTConfig, OptimConfig, TrainConfig, ...): one
``--flag`` per field, with the field's default, help text and (where the field lists them)
choices, so the CLI and the Python API cannot drift apart. Each value is checked where it is
parsed, by the rule of its field (minillm/core/fields.py): ``--beta1 1`` is refused with a
message naming the option, by the same rule that refuses ``OptimConfig(beta1=1.0)``.

Errors are one line on stderr and exit 1 (2 for a bad option), never a traceback; SIGTERM acts
as Ctrl-C; a closed output pipe (``minillm sample | head``) ends the command quietly.
"""
import argparse
import dataclasses
import itertools
import os
import signal
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .core.config import GPTConfig
from .core.fields import check_fields, option_type
from .core.optim import OptimConfig
from .core.sampling import generate
from .exercises.grade import GradeConfig, grade_command
from .formats.checkpoint import describe_run, load_model, load_task_model
from .formats.files import lock_folder, os_error
from .tokenizers import BPETokenizer, CharTokenizer, stream_decode
from .training.classify import METRICS, classify_texts
from .training.data import DownloadError
from .training.evaluate import EvalConfig, evaluate
from .training.finetune import SCHEDULE, FinetuneConfig, check_config, finetune
from .training.instruct import TEMPLATE, Template, respond
from .training.labelled import map_chars
from .training.malloc import keep_freed_memory
from .training.tasks import write_tasks
from .training.train import TrainConfig, TrainingDiverged, train
from .training.viz import plot_confusion, plot_health, plot_losses


def _given(namespace, dest):
    """Note that the option ``dest`` was written on the command line (see ``explicit_args``)."""
    namespace.given_options = getattr(namespace, "given_options", frozenset()) | {dest}


class Store(argparse.Action):
    """argparse's plain store action, remembering that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _given(namespace, self.dest)


class StoreBool(argparse.BooleanOptionalAction):
    """--flag / --no-flag, remembering that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _given(namespace, self.dest)


def add_config_args(parser, cls, skip=(), title=None):
    """Add one --flag per field of the dataclass ``cls`` (booleans become --flag/--no-flag)."""
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        options = dict(dest=f.name, default=f.default, help=f.metadata.get("help", ""))
        if f.type is bool:
            group.add_argument(flag, action=StoreBool, **options)
        else:
            group.add_argument(flag, action=Store, type=option_type(f),
                               choices=f.metadata.get("choices"), **options)
    return group


def config_from_args(cls, args, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def explicit_args(cls, args):
    """{field: value} of the fields of ``cls`` written on the command line (not defaulted)."""
    given = getattr(args, "given_options", frozenset())
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name in given}


PRESETS = {"gpt2": GPTConfig, "llama": GPTConfig.llama}   # name -> GPTConfig(**options)


def model_config_from_args(args):
    """The GPTConfig of ``train``: the preset's values, then every option given explicitly."""
    return PRESETS[args.preset](**explicit_args(GPTConfig, args))


@dataclasses.dataclass
class SampleConfig:
    """How to continue a prompt."""
    ckpt: str = dataclasses.field(default=None, metadata={
        "help": "the model: a minillm run folder, or a GPT-2 or Llama folder in the Hugging "
                "Face layout "
                "(config.json, model.safetensors, vocab.json, merges.txt)"})
    pretrained: str = dataclasses.field(default=None, metadata={
        "help": "a GPT-2 or Llama folder (the same as --ckpt with such a folder)"})
    prompt: str = dataclasses.field(default="\n", metadata={"help": "text to continue"})
    max_new_tokens: int = dataclasses.field(default=500, metadata={
        "help": "tokens to generate", "min": 0})
    temperature: float = dataclasses.field(default=0.8, metadata={
        "help": "< 1 sharper, > 1 flatter (0: greedy)", "min": 0.0})
    top_k: int = dataclasses.field(default=None, metadata={
        "help": "sample among the k most likely tokens", "min": 1})
    top_p: float = dataclasses.field(default=None, metadata={
        "help": "sample among the smallest set with probability >= p", "above": 0.0, "max": 1.0})
    greedy: bool = dataclasses.field(default=False, metadata={
        "help": "always take the most likely token"})
    seed: int = dataclasses.field(default=0, metadata={
        "help": "seed of the sampling generator", "min": 0})
    kv_cache: bool = dataclasses.field(default=True, metadata={
        "help": "reuse keys/values of earlier positions"})
    rolling_cache: bool = dataclasses.field(default=False, metadata={
        "help": "past the context length, keep the last block_size positions' keys and values "
                "instead of recomputing the window (rotary positions only; faster, not exact)"})
    instruction: str = dataclasses.field(default=None, metadata={
        "help": "ask an instruction model (finetune --task instruct): the instruction is put "
                "into its prompt template, and the response is printed up to its end marker"})
    input: str = dataclasses.field(default=None, metadata={
        "help": "with --instruction: the input it applies to (e.g. --instruction reverse "
                "--input hello)"})

    def __post_init__(self):
        check_fields(self)


def sample_text(model, tokenizer, config, out=None):
    """Stream a continuation of config.prompt to ``out`` (standard output) and return it.
    Every error of the prompt or the settings comes before anything is printed."""
    out = sys.stdout if out is None else out
    ids = tokenizer.encode(config.prompt)
    tokens = generate(model, ids, config.max_new_tokens, temperature=config.temperature,
                      top_k=config.top_k, top_p=config.top_p, greedy=config.greedy,
                      rng=np.random.default_rng(config.seed), use_cache=config.kv_cache,
                      rolling=config.rolling_cache)
    first = next(tokens, None)            # runs generate's checks and draws the first token
    tokens = itertools.chain([] if first is None else [first], tokens)
    pieces = []
    try:
        out.write(config.prompt)
        for piece in stream_decode(tokenizer, tokens):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
    except OSError as e:                 # (a closed pipe stays a BrokenPipeError)
        raise os_error(e, "writing the sample to", "the standard output") from None
    return "".join(pieces)


def sample_prompt(tokenizer):
    """A one-token prompt the tokenizer can encode: a newline if possible, else its first token."""
    if not isinstance(tokenizer, CharTokenizer) or "\n" in tokenizer.stoi:
        return "\n"
    return tokenizer.chars[0]


def cmd_train(args):
    run = config_from_args(TrainConfig, args)
    model_config = model_config_from_args(args)
    optim_config = config_from_args(OptimConfig, args)
    with lock_folder(run.out_dir):          # held until the loss curve is drawn, too
        result = train(run, model_config, optim_config)
        state = result.state
        if state.get("interrupted"):
            print(describe_run(run.out_dir, state))
            print(f"continue with: python -m minillm train --resume --out-dir {run.out_dir}")
            return 0
        plot_losses(state["history"], Path(run.out_dir) / "loss.png")
        if run.health and state.get("health"):
            plot_health(state["health"], Path(run.out_dir) / "health.png")
    print("\n" + describe_run(run.out_dir, state) + "\n  loss.png                the loss curves"
          + ("\n  health.png/.json        activations, gradients, updates per layer"
             if run.health else ""))
    if run.sample_tokens > 0:
        print(f"--- a sample of {run.sample_tokens} tokens of the last state (temperature 0.8) ---")
        sample_text(result.model, result.tokenizer,
                    SampleConfig(prompt=sample_prompt(result.tokenizer),
                                 max_new_tokens=run.sample_tokens, seed=run.seed))
    return 0


def cmd_sample(args):
    config = config_from_args(SampleConfig, args)
    if (config.ckpt is None) == (config.pretrained is None):
        raise ValueError("give exactly one of --ckpt DIR (a minillm run or a Hugging Face folder) "
                         "or --pretrained DIR (a GPT-2 or Llama folder)")
    if config.input is not None and config.instruction is None:
        raise ValueError("--input goes with --instruction (the instruction it is for)")
    if config.instruction is not None and "prompt" in getattr(args, "given_options", ()):
        raise ValueError("give --prompt (a text to continue) or --instruction, not both")
    model, tokenizer, _, task, _ = load_task_model(
        config.ckpt or config.pretrained,
        log=lambda line: print(f"sampling {line}", file=sys.stderr))
    if config.instruction is None:
        sample_text(model, tokenizer, config)
    else:
        answer_instruction(model, tokenizer, task, config)
    return 0


def answer_instruction(model, tokenizer, task, config, out=None):
    """Print the response to config.instruction (and config.input) in the model's template,
    stopping at its end marker; returns it."""
    out = sys.stdout if out is None else out
    record = {"instruction": config.instruction, "input": config.input or ""}
    if task is not None and task.get("task") == "instruct":
        template = Template.from_dict(task["template"])
        if task.get("map_chars") and isinstance(tokenizer, CharTokenizer):
            record = {k: map_chars(v, tokenizer.stoi) for k, v in record.items()}
    else:
        template = TEMPLATE
        print("note: this model was not instruction-tuned (finetune --task instruct); using the "
              "default template", file=sys.stderr)
    pieces = respond(model, tokenizer, record, template, config.max_new_tokens,
                     temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                     greedy=config.greedy, rng=np.random.default_rng(config.seed))
    first = next(pieces, "")              # every error of the prompt comes before any output
    text = [first]
    try:
        out.write(first)
        for piece in pieces:
            text.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
    except OSError as e:
        raise os_error(e, "writing the response to", "the standard output") from None
    return "".join(text)


def cmd_finetune(args):
    config = config_from_args(FinetuneConfig, args)
    optim_config = config_from_args(OptimConfig, args)      # schedule: FinetuneConfig's
    check_config(config)                    # before out_dir is locked (it may be --init-from)
    out = Path(config.out_dir)
    with lock_folder(config.out_dir):
        result = finetune(config, optim_config)
        state = result.state
        plot_losses(state["history"], out / "loss.png", f"minillm fine-tuning ({config.task})",
                    labels={"watch": f"{config.watch_data} (last tenth)"})
        if config.task == "classify":
            test = result.metrics["test"]
            plot_confusion(test["confusion"], test["labels"], out / "confusion.png",
                           f"test, iteration {state['iter']}: accuracy {test['accuracy']:.3f}")
    files = [("adapters.safetensors", "the LoRA adapters of the last state", result.lora),
             (METRICS, "test and validation metrics of the last state" if config.task ==
              "classify" else "exact match on validation records", config.task != "text"),
             ("loss.png", "the loss curves", True),
             ("confusion.png", "the test confusion matrix", config.task == "classify")]
    print("\n" + describe_run(config.out_dir, state)
          + "".join(f"\n  {name:<23} {what}" for name, what, shown in files if shown)
          + ("\n(stopped early by an interruption)" if state.get("interrupted") else ""))
    if config.task == "classify":
        print(f"label new text with: python -m minillm classify --ckpt {config.out_dir} TEXT")
    elif config.task == "instruct":
        print(f"ask it with: python -m minillm sample --ckpt {config.out_dir} --greedy "
              "--instruction TEXT [--input TEXT]")
    elif config.sample_tokens > 0:
        print(f"--- a sample of {config.sample_tokens} tokens of the last state "
              "(temperature 0.8) ---")
        sample_text(result.model, result.tokenizer, SampleConfig(
            prompt=sample_prompt(result.tokenizer), max_new_tokens=config.sample_tokens,
            seed=config.seed))
    return 0


@dataclasses.dataclass
class ExportConfig:
    """Which model to write as a Hugging Face folder, and where."""
    ckpt: str = dataclasses.field(default=None, metadata={"help": "a minillm run folder"})
    out_dir: str = dataclasses.field(default=None, metadata={
        "help": "the folder to write: config.json, model.safetensors, vocab.json, merges.txt"})

    def __post_init__(self):
        check_fields(self)


def cmd_export(args):
    config = config_from_args(ExportConfig, args)
    if not config.ckpt or not config.out_dir:
        raise ValueError("give --ckpt DIR (a minillm run) and --out-dir DIR (the new folder)")
    model, tokenizer, _ = load_model(config.ckpt)
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"{config.ckpt} has a {type(tokenizer).__name__}; a Hugging Face "
                         "folder needs a byte-level BPE tokenizer (train with --tokenizer bpe)")
    model.save_pretrained(config.out_dir, tokenizer)
    kind = "Llama" if model.config.pos_encoding == "rope" else "GPT-2"
    print(f"wrote {config.out_dir}/, a {kind} folder (config.json, model.safetensors, vocab.json, "
          "merges.txt)")
    return 0


@dataclasses.dataclass
class ClassifyConfig:
    """Which classifier labels the texts."""
    ckpt: str = dataclasses.field(default=None, metadata={
        "help": "a classifier's run folder or checkpoint file (finetune --task classify)"})

    def __post_init__(self):
        check_fields(self)


def cmd_classify(args):
    config = config_from_args(ClassifyConfig, args)
    if not config.ckpt:
        raise ValueError("give --ckpt DIR, a classifier made by finetune --task classify")
    model, tokenizer, _, task, head = load_task_model(
        config.ckpt, log=lambda line: print(f"classifying with {line}", file=sys.stderr))
    if not task or task.get("task") != "classify":
        raise ValueError(f"{config.ckpt} is not a classifier (it has no classification head); "
                         "make one with python -m minillm finetune --task classify")
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    labels, probs = classify_texts(model, head, task, tokenizer, texts)
    try:
        for label, p, text in zip(labels, probs, texts):
            sys.stdout.write(f"{label}\t{p:.3f}\t{text.strip()}\n")
    except OSError as e:
        raise os_error(e, "writing the labels to", "the standard output") from None
    return 0


def cmd_eval(args):
    evaluate(config_from_args(EvalConfig, args))
    return 0


@dataclasses.dataclass
class TasksConfig:
    """Where to write the generated instruction tasks."""
    out_dir: str = dataclasses.field(default=None, metadata={
        "help": "folder for train.jsonl, val.jsonl and test.jsonl"})
    seed: int = dataclasses.field(default=0, metadata={
        "help": "seed of the split of words and number pairs", "min": 0})

    def __post_init__(self):
        check_fields(self)


def cmd_tasks(args):
    config = config_from_args(TasksConfig, args)
    if not config.out_dir:
        raise ValueError("give --out-dir DIR for train.jsonl, val.jsonl and test.jsonl")
    counts = write_tasks(config.out_dir, config.seed)
    print(f"wrote {config.out_dir}/: " + ", ".join(f"{part}.jsonl ({n:,} records)"
                                                  for part, n in counts.items()))
    return 0


def cmd_grade(args):
    return grade_command(args.paths, config_from_args(GradeConfig, args), sys.stdout,
                         progress=sys.stderr)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minillm", description="Train a GPT written in NumPy, sample from it, fine-tune it.")
    parser.add_argument("--version", action="version", version=f"minillm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train", help="train a GPT on a text (characters or BPE tokens)",
                       formatter_class=formatter)
    add_config_args(p, TrainConfig, title="run")
    model = add_config_args(p, GPTConfig, skip=("vocab_size",), title="model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="gpt2", help=(
        "the block to start from: gpt2 (the defaults below) or llama (GPTConfig.llama: "
        "--norm rmsnorm --pos-encoding rope --mlp swiglu --no-bias --no-tie-embeddings "
        "--n-kv-head n_head/2); the options given explicitly apply on top"))
    add_config_args(p, OptimConfig, title="optimizer")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="generate text from a minillm run or a Hugging Face "
                       "folder",
                       formatter_class=formatter)
    add_config_args(p, SampleConfig, title="sampling")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("finetune", help="continue training a saved model (or a GPT-2 or Llama "
                       "folder) on a new text, fully or with LoRA adapters, or fine-tune it "
                       "into a classifier or an instruction follower", formatter_class=formatter)
    add_config_args(p, FinetuneConfig, title="fine-tuning")
    add_config_args(p, OptimConfig, skip=SCHEDULE, title="optimizer")
    p.set_defaults(func=cmd_finetune)
    p = sub.add_parser("export", help="write a minillm run as a Hugging Face folder (GPT-2 "
                       "or Llama, as its block)",
                       formatter_class=formatter)
    add_config_args(p, ExportConfig, title="export")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("classify", help="label texts with a classifier made by finetune "
                       "--task classify", formatter_class=formatter)
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="texts to label (none: one text per line of standard input)")
    add_config_args(p, ClassifyConfig, title="classify")
    p.set_defaults(func=cmd_classify)
    p = sub.add_parser("eval", help="measure a model on data: loss and perplexity on a text, "
                       "accuracy of a classifier, exact match of an instruction model",
                       formatter_class=formatter)
    add_config_args(p, EvalConfig, title="evaluation")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("tasks", help="write the generated instruction tasks as JSON lines",
                       formatter_class=formatter)
    add_config_args(p, TasksConfig, title="tasks")
    p.set_defaults(func=cmd_tasks)
    p = sub.add_parser("grade", help="run exercise notebooks and tabulate their checks (see "
                       "exercises/README.md)", formatter_class=formatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="handed-in notebooks, or folders of them")
    add_config_args(p, GradeConfig, title="grading")
    p.set_defaults(func=cmd_grade)
    return parser


def error_message(error):
    """One line for an error: an OSError's own message and file, without "[Errno N]"."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    return str(error)


def _flush_stdout():
    """Flush standard output; if it cannot be written (its reader is gone, the disk is full),
    send what is left to /dev/null, or Python would complain again when it exits."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def main(argv=None):
    args = build_parser().parse_args(argv)
    keep_freed_memory()                  # faster training steps (see minillm/training/malloc.py)
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C
    except ValueError:                   # not the main thread
        previous = None
    try:
        return args.func(args)
    except BrokenPipeError:              # e.g. `minillm sample | head`: the reader has enough
        return 0
    except MemoryError as e:
        print(f"minillm {args.command}: error: out of memory ({e or 'an array did not fit'}); "
              "use a smaller model or batch", file=sys.stderr)
        return 1
    except (ValueError, OSError, DownloadError, TrainingDiverged) as e:
        print(f"minillm {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _flush_stdout()
