"""The command line: ``python -m minillm train | sample | finetune | export``.

Options are built from the dataclass configs (GPTConfig, OptimConfig, TrainConfig, ...): one
``--flag`` per field, with the field's default, help text and (where the field lists them)
choices, so the CLI and the Python API cannot drift apart.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .core.config import GPTConfig
from .core.optim import OptimConfig
from .core.sampling import generate
from .formats.checkpoint import load_model
from .tokenizers import BPETokenizer, CharTokenizer, stream_decode
from .training.data import DownloadError
from .training.finetune import SCHEDULE, FinetuneConfig, finetune
from .training.malloc import keep_freed_memory
from .training.train import TrainConfig, TrainingDiverged, train
from .training.viz import plot_losses


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
            group.add_argument(flag, action=Store, type=f.type, choices=f.metadata.get("choices"),
                               **options)
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
    max_new_tokens: int = dataclasses.field(default=500, metadata={"help": "tokens to generate"})
    temperature: float = dataclasses.field(default=0.8, metadata={
        "help": "< 1 sharper, > 1 flatter"})
    top_k: int = dataclasses.field(default=None, metadata={
        "help": "sample among the k most likely tokens"})
    top_p: float = dataclasses.field(default=None, metadata={
        "help": "sample among the smallest set with probability >= p"})
    greedy: bool = dataclasses.field(default=False, metadata={
        "help": "always take the most likely token"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the sampling generator"})
    kv_cache: bool = dataclasses.field(default=True, metadata={
        "help": "reuse keys/values of earlier positions"})
    rolling_cache: bool = dataclasses.field(default=False, metadata={
        "help": "past the context length, keep the last block_size positions' keys and values "
                "instead of recomputing the window (rotary positions only; faster, not exact)"})


def sample_text(model, tokenizer, config, out=None):
    """Stream a continuation of config.prompt to ``out`` (standard output) and return it."""
    out = sys.stdout if out is None else out
    ids = tokenizer.encode(config.prompt)
    tokens = generate(model, ids, config.max_new_tokens, temperature=config.temperature,
                      top_k=config.top_k, top_p=config.top_p, greedy=config.greedy,
                      rng=np.random.default_rng(config.seed), use_cache=config.kv_cache,
                      rolling=config.rolling_cache)
    pieces = []
    out.write(config.prompt)
    for piece in stream_decode(tokenizer, tokens):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces)


def sample_prompt(tokenizer):
    """A one-token prompt the tokenizer can encode: a newline if possible, else its first token."""
    if not isinstance(tokenizer, CharTokenizer) or "\n" in tokenizer.stoi:
        return "\n"
    return tokenizer.chars[0]


def cmd_train(args):
    run = config_from_args(TrainConfig, args)
    result = train(run, model_config_from_args(args), config_from_args(OptimConfig, args))
    state = result.state
    if state.get("interrupted"):
        print(f"checkpoint saved to {run.out_dir} at iteration {state['iter']}; "
              f"continue with: python -m minillm train --resume --out-dir {run.out_dir}")
        return 0
    plot_losses(state["history"], Path(run.out_dir) / "loss.png")
    print(f"\nsaved checkpoint and loss curve in {run.out_dir}/ "
          f"(best val loss {state['best_val']:.4f})")
    if run.sample_tokens > 0:
        print(f"--- a sample of {run.sample_tokens} tokens (temperature 0.8) ---")
        sample_text(result.model, result.tokenizer,
                    SampleConfig(prompt=sample_prompt(result.tokenizer),
                                 max_new_tokens=run.sample_tokens, seed=run.seed))
    return 0


def cmd_sample(args):
    config = config_from_args(SampleConfig, args)
    if (config.ckpt is None) == (config.pretrained is None):
        raise ValueError("give exactly one of --ckpt DIR (a minillm run or a Hugging Face folder) "
                         "or --pretrained DIR (a GPT-2 or Llama folder)")
    model, tokenizer, _ = load_model(config.ckpt or config.pretrained)
    sample_text(model, tokenizer, config)
    return 0


def cmd_finetune(args):
    config = config_from_args(FinetuneConfig, args)
    result = finetune(config, config_from_args(OptimConfig, args))   # schedule: FinetuneConfig's
    state = result.state
    plot_losses(state["history"], Path(config.out_dir) / "loss.png", "minillm fine-tuning",
                labels={"watch": f"{config.watch_data} (last tenth)"})
    what = "merged checkpoint, adapters.safetensors" if result.lora else "checkpoint"
    print(f"\nsaved {what} and loss curve in {config.out_dir}/ "
          f"(best val loss {state['best_val']:.4f})"
          + (" after an interruption" if state.get("interrupted") else ""))
    if config.sample_tokens > 0:
        print(f"--- a sample of {config.sample_tokens} tokens (temperature 0.8) ---")
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
                       "folder) on a "
                       "new text, fully or with LoRA adapters", formatter_class=formatter)
    add_config_args(p, FinetuneConfig, title="fine-tuning")
    add_config_args(p, OptimConfig, skip=SCHEDULE, title="optimizer")
    p.set_defaults(func=cmd_finetune)
    p = sub.add_parser("export", help="write a minillm run as a Hugging Face folder (GPT-2 "
                       "or Llama, as its block)",
                       formatter_class=formatter)
    add_config_args(p, ExportConfig, title="export")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    keep_freed_memory()                  # faster training steps (see minillm/training/malloc.py)
    try:
        return args.func(args)
    except (ValueError, OSError, DownloadError, TrainingDiverged) as e:
        print(f"minillm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
