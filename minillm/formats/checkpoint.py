"""Models on disk: minillm's training checkpoints, and Hugging Face GPT-2 and Llama folders
as models.

A training run keeps everything in its folder:

    out_dir/
      checkpoint.safetensors   the LAST state of the run, what --resume continues: params.<name>,
                               adam.m.<name>, adam.v.<name> tensors, and in the header's metadata
                               the configs, the iteration, the RNG state, the loss history, the
                               data's identity and the tokenizer (all JSON)
      best.safetensors         the model at the lowest validation loss so far (no optimizer state)
      tokenizer.json           the same tokenizer, for reading by people and other tools
      loss.png                 the loss curves, drawn at the end of a run

A fine-tuned model also says what it was fine-tuned for: the metadata entry "task" (JSON) is
{"task": "classify", "labels": [names], "pool": ..., ...} for a classifier, whose head is saved
beside the GPT as the tensors classifier.weight (C, K) and classifier.bias (K,), or {"task":
"instruct", "template": {...}, ...} for an instruction model (the prompt template and end marker
that ``sample --instruction`` and ``eval`` apply). A checkpoint without it is a language model.

The save policy (``train.train_loop``): at every evaluation, on Ctrl-C or SIGTERM and at the
end, the latest state replaces checkpoint.safetensors; when the validation loss improved, the
model also replaces best.safetensors (written first, so a run killed between the two writes never
reports a best model it does not have). Every file is replaced in one step (``os.replace``): a
run killed mid-write keeps the previous complete file.

Integrity: every tensor's bytes and the metadata carry a SHA-256 (``safetensors.save_file(...,
checksums=True)``), verified on load, so a damaged file is refused instead of loading as slightly
wrong numbers. Tensors and metadata are read from one open file, so they come from one save.
``save_checkpoint`` checks what it writes the way ``load_checkpoint`` does: it never writes a
file that would be refused.

``load_model(path)`` reads either kind of folder, so every command that starts from a model
(``sample``, ``finetune``) accepts both. A checkpoint written before a config field existed
loads with that field's default (the GPT-2 block).
"""
import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.classifier import HEAD, POOLS
from ..core.config import GPTConfig, check_tensors, param_shapes
from ..core.model import GPT
from ..tokenizers import tokenizer_from_dict
from . import safetensors

CHECKPOINT = "checkpoint.safetensors"      # the last state of a run (what --resume continues)
BEST = "best.safetensors"                  # the model at the lowest validation loss
TOKENIZER = "tokenizer.json"
FORMAT = "minillm-checkpoint-2"            # with checksums
LEGACY_FORMAT = "minillm-checkpoint-1"     # minillm 0.2 and before: read without checksums
TASKS = ("text", "classify", "instruct")    # what a model was fine-tuned for (metadata "task")
TEMPLATE_KEYS = ("with_input", "without_input", "end")


def checkpoint_path(path):
    """A run folder or the checkpoint file itself -> the checkpoint file's path."""
    path = Path(path)
    return path if path.is_file() or path.suffix == ".safetensors" else path / CHECKPOINT


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_state(state, source):
    """ValueError naming ``source`` and the entry if a run's state (the "state" of a checkpoint)
    is not what ``train.new_state`` and the training loop make. Every entry is optional (a model
    saved outside training has none), but each one present must be of its kind: "iter",
    "best_iter", "adam_t" integers >= 0, "best_val" a number, "history" the loss curves, "rng",
    "data", "configs" objects."""
    def bad(what):
        return ValueError(f"{source}: damaged run state: {what}")

    if not isinstance(state, dict):
        raise bad(f"expected an object, got {type(state).__name__}")
    state = {"iter": 0, "best_val": 0.0, **state}
    if not _is_count(state["iter"]):
        raise bad(f"'iter' must be an integer >= 0, got {state['iter']!r}")
    if not _is_number(state["best_val"]):
        raise bad(f"'best_val' must be a number, got {state['best_val']!r}")
    if state.get("best_iter") is not None and not _is_count(state["best_iter"]):
        raise bad(f"'best_iter' must be an integer >= 0, got {state['best_iter']!r}")
    if "adam_t" in state and not _is_count(state["adam_t"]):
        raise bad(f"'adam_t' must be an integer >= 0, got {state['adam_t']!r}")
    for key in ("rng", "data", "configs"):
        if key in state and not isinstance(state[key], dict):
            raise bad(f"{key!r} must be an object, got {state[key]!r:.60}")
    history = state.get("history", {})
    if not (isinstance(history, dict) and isinstance(history.get("train", []), list)
            and isinstance(history.get("eval", []), list)):
        raise bad("'history' must be an object of 'train' and 'eval' lists")
    if not all(_is_number(x) for x in history.get("train", [])):
        raise bad("'history' 'train' must hold numbers")
    if not all(isinstance(row, list) and len(row) == 3 and _is_count(row[0])
               and all(_is_number(x) for x in row[1:]) for row in history.get("eval", [])):
        raise bad("'history' 'eval' must hold [iteration, train loss, val loss] rows")
    extra = history.get("eval_extra", {})
    if not (isinstance(extra, dict) and all(
            isinstance(rows, list) and all(isinstance(r, list) and len(r) == 2 and _is_count(r[0])
                                           and _is_number(r[1]) for r in rows)
            for rows in extra.values())):
        raise bad("'history' 'eval_extra' must map names to [iteration, loss] rows")


def check_model(config, params, tokenizer, source):
    """The checks a checkpoint's model gets, on saving and on loading: a complete config,
    every tensor named, shaped, float and finite, a tokenizer the model can embed."""
    config = GPTConfig.from_dict(config.to_dict(), f"{source}: model config")
    check_tensors(params, param_shapes(config), str(source))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{source}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                         f"only {config.vocab_size} (vocab_size)")


def check_task(task, head, config, source):
    """ValueError naming ``source`` unless ``task`` (None, or what the model was fine-tuned
    for) and ``head`` (the classifier's tensors, or None) fit each other and the model: a
    "classify" task has two or more distinct label names, a pooling of POOLS and a head of
    shapes (C, K), (K,); an "instruct" task a template of three strings; no other task has a
    head."""
    def bad(what):
        return ValueError(f"{source}: damaged task metadata: {what}")

    if task is None:
        if head:
            raise bad("the file holds a classification head but no task (labels)")
        return
    if not isinstance(task, dict) or task.get("task") not in TASKS:
        raise bad(f"expected an object whose 'task' is one of {TASKS}, got {task!r:.80}")
    if task["task"] != "classify" and head:
        raise bad(f"a {task['task']!r} model has no classification head")
    if task["task"] == "instruct":
        template = task.get("template")
        if not (isinstance(template, dict) and all(
                isinstance(template.get(k), str) and template[k] for k in TEMPLATE_KEYS)):
            raise bad(f"'template' must be an object of non-empty strings {TEMPLATE_KEYS}")
    if task["task"] != "classify":
        return
    labels = task.get("labels")
    if not (isinstance(labels, list) and len(labels) >= 2 and len(set(labels)) == len(labels)
            and all(isinstance(label, str) and label for label in labels)):
        raise bad(f"'labels' must be a list of two or more distinct names, got {labels!r:.80}")
    if task.get("pool") not in POOLS:
        raise bad(f"'pool' must be one of {POOLS}, got {task.get('pool')!r}")
    K = len(labels)
    check_tensors(head or {}, {HEAD[0]: (config.n_embd, K), HEAD[1]: (K,)},
                  f"{source} (the classification head)")


def save_checkpoint(out_dir, model, tokenizer, *, optimizer=None, state=None, name=CHECKPOINT,
                    head=None, task=None):
    """Write model (+ optimizer) and a JSON-able ``state`` dict to out_dir/``name``, after
    checking them as ``load_checkpoint`` would (ValueError instead of a file it would refuse).
    A fine-tuned model also gets its ``task`` (metadata) and, for a classifier, its ``head``
    ({"classifier.weight": (C, K), "classifier.bias": (K,)}).

    >>> save_checkpoint("out", model, tokenizer, optimizer=opt, state={"iter": 1})  # doctest: +SKIP
    """
    path = Path(out_dir) / name
    check_model(model.config, model.params, tokenizer, path)
    check_task(task, head, model.config, path)
    tensors = {f"params.{k}": v for k, v in model.params.items()}
    tensors.update(head or {})
    if optimizer is not None:
        if set(optimizer.m) != set(model.params):
            raise ValueError(f"{path}: the optimizer's state is for other tensors than the model")
        tensors.update({f"adam.m.{k}": v for k, v in optimizer.m.items()})
        tensors.update({f"adam.v.{k}": v for k, v in optimizer.v.items()})
    state = {**(state or {}), "adam_t": optimizer.t if optimizer else 0}
    check_state(state, path)
    try:
        state_json = json.dumps(state)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the run state cannot be saved as JSON ({e})") from None
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(model.config.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "state": state_json,
    }
    if task is not None:
        metadata["task"] = json.dumps(task)
    safetensors.save_file(tensors, path, metadata=metadata, checksums=True)
    return path


def run_files(folder):
    """The names of the run files (checkpoint.safetensors, best.safetensors) in ``folder``."""
    return [name for name in (CHECKPOINT, BEST) if (Path(folder) / name).is_file()]


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns."""
    model: GPT
    tokenizer: object         # CharTokenizer or BPETokenizer
    adam: dict                # {"t", "m", "v"} for AdamW.load_state_dict, or None
    state: dict               # iteration, RNG state, loss history, configs
    path: Path
    task: dict = None         # what the model was fine-tuned for (None: a language model)
    head: dict = None         # a classifier's {"classifier.weight", "classifier.bias"}, or None

    def describe(self):
        """Which model this is, in one line: the last state of its run or its best model,
        at which iteration, with which validation loss (what ``sample`` prints)."""
        state, path = self.state, self.path
        it, best_val, best_iter = state.get("iter"), state.get("best_val"), state.get("best_iter")
        if it is None or best_val is None:
            return f"{path}: a model saved without a training run's state"
        if path.name == BEST:
            return (f"{path}: the run's best model (lowest val loss {best_val:.4f}, at "
                    f"iteration {it})")
        text = f"{path}: the last state of the run (iteration {it}"
        evals = state.get("history", {}).get("eval", [])
        if evals and evals[-1][0] == it:
            text += f", val loss {evals[-1][2]:.4f}"
        text += ")"
        best_path = path.parent / BEST
        if best_iter is not None and best_iter != it and best_path.is_file():
            text += (f"; the best model (val loss {best_val:.4f}, iteration {best_iter}) is "
                     f"{best_path}")
        return text


def describe_run(folder, state):
    """The closing lines of a run: which file of ``folder`` holds which model.

    >>> print(describe_run("out", {"iter": 20, "best_val": 1.5, "best_iter": 10,
    ...                            "history": {"eval": [[10, 1.4, 1.5], [20, 1.3, 1.6]]}}))
    saved in out/:
      checkpoint.safetensors  the last state, iteration 20, val loss 1.6000 (--resume continues it)
      best.safetensors        the lowest val loss, 1.5000 at iteration 10
    """
    it, evals = state["iter"], state["history"]["eval"]
    last = f", val loss {evals[-1][2]:.4f}" if evals and evals[-1][0] == it else ""
    lines = [f"saved in {folder}/:",
             f"  {CHECKPOINT:<23} the last state, iteration {it}{last} (--resume continues it)"]
    if state.get("best_iter") is not None:
        same = " (the same model)" if state["best_iter"] == it else ""
        lines.append(f"  {BEST:<23} the lowest val loss, {state['best_val']:.4f} at iteration "
                     f"{state['best_iter']}{same}")
    return "\n".join(lines)


def _json_entry(meta, key, path):
    if key not in meta:
        raise ValueError(f"{path}: damaged checkpoint metadata: no {key!r} entry")
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: damaged checkpoint metadata: {key!r} is not JSON ({e})") \
            from None


def load_checkpoint(path, dtype=None):
    """Read a checkpoint written by ``save_checkpoint``; clear errors for anything wrong with it.

    >>> ckpt = load_checkpoint("out")                       # doctest: +SKIP
    >>> ckpt.model, ckpt.tokenizer, ckpt.state["iter"]      # doctest: +SKIP
    """
    path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `python -m minillm train`"
                                " or give the folder it was saved to")
    tensors, meta = safetensors.load_with_metadata(path)   # one open file; checksums verified
    if meta.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise ValueError(f"{path} is a safetensors file but not a minillm checkpoint "
                         f"(format {meta.get('format')!r}); for a Hugging Face folder use "
                         "--pretrained")
    if meta["format"] == FORMAT and safetensors.CHECKSUMS not in meta:
        raise ValueError(f"{path} is damaged: a {FORMAT} file has checksums, this one has none")
    config = GPTConfig.from_dict(_json_entry(meta, "model_config", path), f"{path}: model config")
    if dtype is not None:
        config = replace(config, dtype=dtype)
    tokenizer = tokenizer_from_dict(_json_entry(meta, "tokenizer", path), f"{path}: tokenizer")
    state = _json_entry(meta, "state", path)
    check_state(state, path)
    task = _json_entry(meta, "task", path) if "task" in meta else None
    groups = {"params.": {}, "adam.m.": {}, "adam.v.": {}}
    head = {}
    for name, array in tensors.items():
        if name in HEAD:
            head[name] = array
            continue
        prefix = next((p for p in groups if name.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"{path}: unexpected tensor {name!r} (expected params.*, adam.m.*, "
                             "adam.v.*, classifier.*)")
        groups[prefix][name[len(prefix):]] = array
    params, m, v = groups.values()
    check_model(config, params, tokenizer, path)       # before the cast: an int tensor is refused
    check_task(task, head, config, path)
    head = {k: head[k].astype(config.dtype, copy=False) for k in HEAD} if head else None
    expected = param_shapes(config)
    params = {k: params[k].astype(config.dtype, copy=False) for k in expected}  # GPT-2's order
    adam = None
    if m or v:
        check_tensors(m, expected, f"{path} (AdamW's first moments)")
        check_tensors(v, expected, f"{path} (AdamW's second moments)")
        negative = next((k for k, a in v.items() if (a < 0).any()), None)
        if negative:
            raise ValueError(f"{path}: AdamW's second moment of {negative!r} holds negative "
                             "values (a mean of squares cannot)")
        adam = {"t": state.get("adam_t", 0), "m": m, "v": v}
    return Checkpoint(GPT(config, params=params), tokenizer, adam, state, path, task, head)


def load_pretrained(folder, dtype="float32"):
    """Load a Hugging Face GPT-2 or Llama folder -> (GPT, BPETokenizer or None).

    The same as ``GPT.from_pretrained(folder)`` with the tokenizer handed back beside the model.

    >>> model, tokenizer = load_pretrained("gpt2-folder", dtype="float64")   # doctest: +SKIP
    """
    model = GPT.from_pretrained(folder, dtype)
    return model, model.tokenizer


def load_model(path, log=None):
    """(model, tokenizer, kind) from a minillm run folder or checkpoint file ("minillm") or a
    Hugging Face GPT-2 ("gpt2") or Llama ("llama") folder. ``log``, if given, gets one line
    saying which model was loaded (for a run folder: its last state, checkpoint.safetensors;
    give best.safetensors for the best).

    >>> model, tokenizer, kind = load_model("out")                         # doctest: +SKIP
    """
    return load_task_model(path, log)[:3]


def load_task_model(path, log=None):
    """(model, tokenizer, kind, task, head): ``load_model``'s three, and what the model was
    fine-tuned for (the checkpoint's task metadata; None for a language model and for a Hugging
    Face folder) with a classifier's head (or None).

    >>> model, tokenizer, kind, task, head = load_task_model("out-clf")     # doctest: +SKIP
    >>> task["labels"]                                                      # doctest: +SKIP
    ['negative', 'positive']
    """
    path = Path(path).expanduser()
    if path.is_file() or (path / CHECKPOINT).is_file():
        ckpt = load_checkpoint(path)
        if log is not None:
            log(ckpt.describe())
        return ckpt.model, ckpt.tokenizer, "minillm", ckpt.task, ckpt.head
    if (path / "config.json").is_file():
        model, tokenizer = load_pretrained(path)
        if tokenizer is None:
            raise FileNotFoundError(f"{path} has no vocab.json/merges.txt, so its text cannot be "
                                    "encoded; copy the tokenizer files of the model next to it")
        kind = "llama" if model.config.pos_encoding == "rope" else "gpt2"
        if log is not None:
            log(f"{path}: a {'Llama' if kind == 'llama' else 'GPT-2'} folder, "
                f"{model.num_params():,} parameters")
        return model, tokenizer, kind, None, None
    if (path / BEST).is_file():
        raise FileNotFoundError(f"{path} has {BEST} but no {CHECKPOINT}; give the file: "
                                f"{path / BEST}")
    raise FileNotFoundError(f"{path} is neither a minillm checkpoint folder ({CHECKPOINT}) nor a "
                            "Hugging Face folder (config.json + model.safetensors)")
