"""``python -m minillm eval``: measure a saved model on data, as its task says.

    model                          data                          what is measured
    a language model (any run,     a text file or dataset name   mean loss, perplexity, bits per
    a Hugging Face folder)                                       character (or token and byte)
    a classifier (--task classify) labelled texts (a file or     accuracy, per-class precision and
                                   "sentiment")                  recall, the confusion matrix
    an instruction model, or any   Alpaca records (.jsonl/.json  exact match per task (greedy,
    model given records            or "tasks")                   up to the end marker)

``--split`` chooses the part: all of it, or the part fine-tuning held out, remade from the
seed and fractions the checkpoint keeps (val: validation; test: the classifier's test texts or
the test words of "tasks"; a text's val is its last tenth, as in training).

>>> evaluate(EvalConfig(ckpt="out-clf", data="sentiment", split="test"))   # doctest: +SKIP
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.fields import check_fields
from ..formats.checkpoint import load_task_model
from ..tokenizers import CharTokenizer
from .adapt import list_chars
from .classify import classifier_logits, prepare_texts
from .data import load_text, split
from .instruct import (FIELDS, TEMPLATE, Template, encode_records, exact_match, exact_report,
                       instruct_parts, read_records)
from .labelled import LABELLED_DATASETS, load_labelled, map_chars, split_labelled
from .metrics import classification_metrics, metrics_report, text_metrics, text_report

SPLITS = ("all", "val", "test")


@dataclass
class EvalConfig:
    """Which model, on which data, which part of it."""
    ckpt: str = field(default=None, metadata={
        "help": "the model: a minillm run folder or checkpoint file (a classifier and an "
                "instruction model say so themselves), or a GPT-2 or Llama folder"})
    data: str = field(default=None, metadata={
        "help": "a text (file or dataset name), labelled texts for a classifier (file or "
                "sentiment), or instruction records (.jsonl/.json file or tasks)"})
    split: str = field(default="all", metadata={
        "help": "all of the data, or the part fine-tuning held out (val, test), remade from "
                "the checkpoint's split seed and fractions", "choices": SPLITS})
    batch_size: int = field(default=32, metadata={
        "help": "sequences per forward pass", "min": 1})

    def __post_init__(self):
        check_fields(self)


def is_records(source):
    """Whether ``source`` names instruction records rather than a text."""
    return source == "tasks" or Path(source).suffix.lower() in (".jsonl", ".json")


def evaluate(config, log=print):
    """Measure ``config.ckpt`` on ``config.data`` and print the report; returns its numbers
    ({"text": ...}, {"classify": ...} or {"instruct": ...})."""
    if not config.ckpt or not config.data:
        raise ValueError("give --ckpt DIR (the model) and --data FILE_OR_NAME")
    model, tokenizer, _, task, head = load_task_model(config.ckpt, log=lambda line: log(
        f"model: {line}"))
    kind = (task or {}).get("task", "text")
    if kind == "classify":
        return {"classify": eval_classifier(model, tokenizer, task, head, config, log)}
    if is_records(config.data):
        return {"instruct": eval_instructions(model, tokenizer, task, config, log)}
    if config.data in LABELLED_DATASETS or Path(config.data).suffix.lower() in (".tsv", ".csv"):
        raise ValueError(f"{config.data} is labelled data, for a classifier; {config.ckpt} is "
                         "not one (make one with python -m minillm finetune --task classify)")
    return {"text": eval_text(model, tokenizer, config, log)}


def note_training_data(task, config, log):
    """A note when --split all measures the data the model was fine-tuned on."""
    trained_on = (task or {}).get("split", {}).get("data")
    if config.split == "all" and trained_on == config.data:
        log(f"note: the model was fine-tuned on {config.data}, and --split all includes its "
            "training part; --split test (or val) measures on what it never saw")


def eval_text(model, tokenizer, config, log):
    text, description = load_text(config.data)
    if config.split == "test":
        raise ValueError("a text has no test part (training holds out its last tenth: --split "
                         "val)")
    if isinstance(tokenizer, CharTokenizer) and tokenizer.missing(text):
        raise ValueError(f"the text has characters the model's vocabulary lacks: "
                         f"{list_chars(tokenizer.missing(text))}")
    if config.split == "val":
        text = split(text)[1]             # characters; the same cut as training for char models
    log(f"data: {description}" + (", its last tenth" if config.split == "val" else ""))
    metrics = text_metrics(model, tokenizer, text, config.batch_size)
    log(text_report(metrics))
    return metrics


def eval_classifier(model, tokenizer, task, head, config, log):
    data = load_labelled(config.data)
    rows = np.arange(len(data.texts))
    if config.split != "all":
        s = task["split"]
        rows = split_labelled(data, s["seed"], s["val_frac"], s["test_frac"])[config.split]
    note_training_data(task, config, log)
    unknown = [name for name in data.names if name not in task["labels"]]
    if unknown:
        raise ValueError(f"the data has labels the classifier does not know: {unknown}; its "
                         f"classes are {task['labels']}")
    labels = np.array([task["labels"].index(data.names[k]) for k in data.labels[rows]])
    ids, lengths = prepare_texts([data.texts[i] for i in rows], tokenizer, task,
                                 model.config.block_size)
    log(f"data: {data.description}, {config.split}: {len(rows):,} texts")
    logits = classifier_logits(model, head, ids, lengths, task["pool"], config.batch_size)
    metrics = classification_metrics(logits, labels, task["labels"])
    log(metrics_report(metrics, config.split))
    return metrics


def eval_instructions(model, tokenizer, task, config, log):
    template = Template.from_dict(task["template"]) if task and "template" in task else TEMPLATE
    if config.split == "all":
        if config.data != "tasks" and not Path(config.data).expanduser().exists():
            raise FileNotFoundError(f"the records file {config.data} does not exist (or give "
                                    "tasks, the generated instruction tasks)")
        records = ([r for part in instruct_parts("tasks").values() for r in part]
                   if config.data == "tasks" else read_records(Path(config.data).expanduser()))
    else:
        s = (task or {}).get("split", {})
        parts = instruct_parts(config.data, s.get("seed", 0), s.get("val_frac", 0.1))
        if config.split not in parts:
            raise ValueError(f"{config.data} has no {config.split} part (a records file is split "
                             "into train and val only)")
        records = parts[config.split]
    note_training_data(task, config, log)
    if task and task.get("map_chars") and isinstance(tokenizer, CharTokenizer):
        records = [{**r, **{k: map_chars(r[k], tokenizer.stoi) for k in FIELDS}} for r in records]
    if isinstance(tokenizer, CharTokenizer):
        missing = tokenizer.missing("".join(template.text(r) for r in records))
        if missing:
            raise ValueError(f"the records have characters the model's vocabulary lacks: "
                             f"{list_chars(missing)}")
    T = model.config.block_size
    encoded = encode_records(records, template, tokenizer)
    fits = [r for r, (p, o) in zip(records, encoded) if len(p) + len(o) <= T + 1]
    if len(fits) < len(records):
        log(f"note: {len(records) - len(fits):,} records are longer than the context and are "
            "left out")
    if not fits:
        raise ValueError(f"every record is longer than the model's context of {T} tokens")
    log(f"data: {config.data}, {config.split}: {len(fits):,} records; template "
        f"{template.with_input!r}, end marker {template.end!r}"
        + ("" if task and task.get("task") == "instruct" else
           " (the default: this model was not instruction-tuned)"))
    scores, _ = exact_match(model, tokenizer, fits, template)
    counts = {t: sum(r.get("task") == t for r in fits) for t in scores if t != "all"}
    log(exact_report(scores, "exact match (greedy)") + (
        "\n  records per task: " + ", ".join(f"{t} {n:,}" for t, n in counts.items())
        if counts else f" ({len(fits):,} records)"))
    return {"exact_match": scores, "counts": counts}
