"""The command line: ``python -m minillm train | sample | finetune``.

Options are built from the dataclass configs (GPTConfig, OptimConfig, TrainConfig, ...): one
``--flag`` per field, with the field's default and help text, so the CLI and the Python API
cannot drift apart.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from .finetune import SCHEDULE, FinetuneConfig
from .data import DownloadError
from .malloc import keep_freed_memory
from .model import GPTConfig
from .optim import OptimConfig
from .train import TrainConfig, TrainingDiverged


TYPES = {"int": int, "float": float, "str": str, "bool": bool}   # for string annotations


def add_config_args(parser, cls, skip=(), title=None):
    """Add one --flag per field of the dataclass ``cls`` (booleans become --flag/--no-flag)."""
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = f.type if isinstance(f.type, type) else TYPES.get(str(f.type).split(" ")[0], str)
        if kind is bool:
            group.add_argument(flag, dest=f.name, default=f.default, help=help_text,
                               action=argparse.BooleanOptionalAction)
        else:
            group.add_argument(flag, dest=f.name, default=f.default, type=kind,
                               help=f"{help_text} (default: {f.default})")


def config_from_args(cls, args, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


@dataclasses.dataclass
class SampleConfig:
    """How to continue a prompt."""
    ckpt: str = dataclasses.field(default=None, metadata={"help": "checkpoint folder of minillm train"})
    pretrained: str = dataclasses.field(default=None, metadata={
        "help": "a GPT-2 folder in the Hugging Face layout (config.json, model.safetensors, "
                "vocab.json, merges.txt)"})
    prompt: str = dataclasses.field(default="\n", metadata={"help": "text to continue"})
    max_new_tokens: int = dataclasses.field(default=500, metadata={"help": "tokens to generate"})
    temperature: float = dataclasses.field(default=0.8, metadata={"help": "< 1 sharper, > 1 flatter"})
    top_k: int = dataclasses.field(default=None, metadata={"help": "sample among the k most likely tokens"})
    top_p: float = dataclasses.field(default=None, metadata={"help": "sample among the smallest set with probability >= p"})
    greedy: bool = dataclasses.field(default=False, metadata={"help": "always take the most likely token"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the sampling generator"})
    kv_cache: bool = dataclasses.field(default=True, metadata={"help": "reuse keys/values of earlier positions"})


def sample_text(model, tokenizer, sc, out=None):
    """Stream a continuation of sc.prompt to ``out`` (standard output) and return it."""
    out = sys.stdout if out is None else out
    from .generate import generate
    from .pretrained import stream_decode
    ids = tokenizer.encode(sc.prompt)
    tokens = generate(model, ids, sc.max_new_tokens, sc.temperature, sc.top_k, sc.top_p,
                      sc.greedy, np.random.default_rng(sc.seed), sc.kv_cache)
    pieces = []
    out.write(sc.prompt)
    for piece in stream_decode(tokenizer, tokens):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces)


def cmd_train(args):
    from .viz import plot_losses
    from .train import train
    tc, oc = config_from_args(TrainConfig, args), config_from_args(OptimConfig, args)
    mc = config_from_args(GPTConfig, args)
    model, tokenizer, state = train(tc, mc, oc)
    if state.get("interrupted"):
        print(f"checkpoint saved to {tc.out_dir} at iteration {state['iter']}; "
              f"continue with: python -m minillm train --resume --out-dir {tc.out_dir}")
        return 0
    png = Path(tc.out_dir) / "loss.png"
    plot_losses(state["history"], png)
    print(f"\nsaved checkpoint and loss curve in {tc.out_dir}/ (best val loss {state['best_val']:.4f})")
    if tc.sample_tokens > 0:
        print(f"--- a sample of {tc.sample_tokens} characters (temperature 0.8) ---")
        sample_text(model, tokenizer, SampleConfig(max_new_tokens=tc.sample_tokens, seed=tc.seed))
    return 0


def cmd_sample(args):
    sc = config_from_args(SampleConfig, args)
    if (sc.ckpt is None) == (sc.pretrained is None):
        raise ValueError("give exactly one of --ckpt DIR (a minillm run) or --pretrained DIR (GPT-2)")
    if sc.pretrained is not None:
        from .pretrained import load_pretrained
        model, tokenizer = load_pretrained(sc.pretrained)
        if tokenizer is None:
            raise FileNotFoundError(f"{sc.pretrained} has no vocab.json/merges.txt tokenizer files")
    else:
        from .checkpoint import load_checkpoint
        ckpt = load_checkpoint(sc.ckpt)
        model, tokenizer = ckpt.model, ckpt.tokenizer
    sample_text(model, tokenizer, sc)
    return 0


def cmd_finetune(args):
    from .finetune import finetune, sample_prompt
    from .viz import plot_losses
    fc = config_from_args(FinetuneConfig, args)
    oc = config_from_args(OptimConfig, args)           # the schedule comes from FinetuneConfig
    result = finetune(fc, oc)
    state = result.state
    png = Path(fc.out_dir) / "loss.png"
    plot_losses(state["history"], png, "minillm fine-tuning",
                labels={"watch": f"{fc.watch_data} (last tenth)"})
    what = "merged checkpoint, adapters.safetensors" if result.lora else "checkpoint"
    print(f"\nsaved {what} and loss curve in {fc.out_dir}/ (best val loss {state['best_val']:.4f})"
          + (" after an interruption" if state.get("interrupted") else ""))
    if fc.sample_tokens > 0:
        print(f"--- a sample of {fc.sample_tokens} tokens (temperature 0.8) ---")
        sample_text(result.model, result.tokenizer, SampleConfig(
            prompt=sample_prompt(result.tokenizer), max_new_tokens=fc.sample_tokens, seed=fc.seed))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minillm", description="Train a GPT written in NumPy, sample from it, fine-tune it.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a character-level GPT on a text",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, TrainConfig, title="run")
    add_config_args(p, GPTConfig, skip=("vocab_size",), title="model")
    add_config_args(p, OptimConfig, title="optimizer")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="generate text from a checkpoint or a GPT-2 folder")
    add_config_args(p, SampleConfig, title="sampling")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("finetune", help="continue training a saved model (or a GPT-2 folder) on a "
                       "new text, fully or with LoRA adapters")
    add_config_args(p, FinetuneConfig, title="fine-tuning")
    add_config_args(p, OptimConfig, skip=SCHEDULE, title="optimizer")
    p.set_defaults(func=cmd_finetune)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    keep_freed_memory()                  # faster training steps (see minillm/malloc.py)
    try:
        return args.func(args)
    except (ValueError, OSError, DownloadError, TrainingDiverged) as e:
        print(f"minillm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
