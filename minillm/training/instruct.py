"""Instruction tuning: Alpaca-style records, one prompt template, a loss on the response only,
greedy answers that stop at the end marker, and exact match per task.

The template (every character of it is one of Tiny Shakespeare's 65):

    "Q: {instruction}: {input}\\nA: {output}\\n\\n"       a record with an input
    "Q: {instruction}\\nA: {output}\\n\\n"                 a record without one

The prompt is everything up to "A: "; the response is the output and the end marker "\\n\\n".
Tiny Shakespeare ends every speech with a blank line, so the model already knows the marker as
the end of something; generation stops when it appears.

Targets, the next token as ``GPT.loss_and_grads`` takes them: with ids = prompt ids + response
ids (encoded apart, as at generation time, when the prompt is all there is),

    x = ids[:-1],  y = ids[1:],  y[t] = -1 for t < len(prompt) - 1     (mask_prompt, default)

so the loss is the cross-entropy of the response tokens only; padding has y = -1 as well. With
``mask_prompt=False`` (--no-mask-prompt) the model also learns to predict the prompts. The
validation loss is always measured on the response tokens, so both kinds of run compare.

An answer is right (exact match) when the greedy response, up to the end marker, equals the
record's output and the marker was produced.

Shape legend: B batch, T time (the longest example of the batch, minus one).
"""
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.layers import cross_entropy_forward
from ..core.optim import AdamW
from ..core.sampling import generate
from ..formats.checkpoint import BEST, TOKENIZER, save_checkpoint
from ..formats.files import atomic_write_text
from ..tokenizers import CharTokenizer, stream_decode
from .adapt import fit_vocabulary, learner, list_chars
from .data import read_text_file
from .labelled import map_chars
from .tasks import task_records
from .train import check_memory, new_state, train_loop

INSTRUCT_DATASETS = ("tasks",)
EXACT_PER_TASK = 50                # validation records per task for exact match after training
FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Template:
    """How a record becomes text; ``end`` closes every response.

    >>> Template().prompt({"instruction": "reverse", "input": "hello"})
    'Q: reverse: hello\\nA: '
    >>> Template().prompt({"instruction": "add two and five", "input": ""})
    'Q: add two and five\\nA: '
    """
    with_input: str = "Q: {instruction}: {input}\nA: "
    without_input: str = "Q: {instruction}\nA: "
    end: str = "\n\n"

    def prompt(self, record):
        """The text before the response."""
        form = self.with_input if record.get("input") else self.without_input
        return form.format(instruction=record["instruction"], input=record.get("input", ""))

    def text(self, record):
        """The whole example: prompt, output, end marker."""
        return self.prompt(record) + record["output"] + self.end

    def characters(self):
        """The characters the template itself writes (not those of the records)."""
        fixed = (self.with_input + self.without_input).replace("{instruction}", "")
        return fixed.replace("{input}", "") + self.end

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**{k: data[k] for k in ("with_input", "without_input", "end")})


TEMPLATE = Template()


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

def check_record(record, where):
    """The record as {"task", "instruction", "input", "output"} ("input" may be empty, "task"
    defaults to "all"), or a ValueError naming ``where``."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with instruction, input and output")
    for key in FIELDS:
        value = record.get(key, "" if key == "input" else None)
        if not isinstance(value, str) or (key != "input" and not value.strip()):
            raise ValueError(f"{where}: {key!r} must be a{'' if key == 'input' else ' non-empty'}"
                             f" string, got {value!r:.40}")
    task = record.get("task", "all")
    return {"task": str(task), "instruction": record["instruction"].strip(),
            "input": record.get("input", "").strip(), "output": record["output"].strip()}


def read_records(path):
    """The records of a JSON-lines file (one object a line) or of a JSON file holding a list of
    objects (Alpaca's alpaca_data.json), checked; errors name the line or the item."""
    text = read_text_file(path)
    if Path(path).suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: a .json file must hold a list of records")
        return [check_record(r, f"{path} item {i}") for i, r in enumerate(items)]
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append(check_record(json.loads(line), f"{path} line {n}"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not JSON ({e})") from None
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def instruct_parts(source, seed=0, val_frac=0.1):
    """{"train", "val"[, "test"]}: lists of records. "tasks" is the generator of
    ``tasks.py`` (its own train / val / test words, ``seed`` choosing them); a file is shuffled
    by ``np.random.default_rng(seed)`` and its last ``val_frac`` held out for validation."""
    if source == "tasks":
        return {part: task_records(part, seed) for part in ("train", "val", "test")}
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{source!r} is not an instruction dataset "
                                f"({', '.join(INSTRUCT_DATASETS)}) and the file {path} does not "
                                "exist")
    records = read_records(path)
    if len(records) < 2:
        raise ValueError(f"{path} has {len(records)} record; training and validation need 2")
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, int(round(val_frac * len(records))))
    return {"train": [records[i] for i in sorted(order[n_val:])],
            "val": [records[i] for i in sorted(order[:n_val])]}


def per_task(records, n, seed=0):
    """At most ``n`` records of each task, chosen by a seeded generator, in their order."""
    rng = np.random.default_rng(seed)
    tasks = [r["task"] for r in records]
    keep = []
    for task in dict.fromkeys(tasks):
        rows = np.flatnonzero(np.array(tasks) == task)
        keep += list(rows if len(rows) <= n else rng.choice(rows, size=n, replace=False))
    return [records[i] for i in sorted(keep)]


# ----------------------------------------------------------------------------------------------
# Examples and batches
# ----------------------------------------------------------------------------------------------

def encode_records(records, template, tokenizer):
    """[(prompt ids, response ids)]: the prompt, and the output with the end marker."""
    return [(tokenizer.encode(template.prompt(r)), tokenizer.encode(r["output"] + template.end))
            for r in records]


def sft_batch(examples, mask_prompt=True, pad_id=0):
    """x (B, T), y (B, T) int64 of (prompt ids, response ids) pairs; T = longest - 1; y = -1 on
    padding and, with ``mask_prompt``, on the prompt (see the module's doc).

    >>> x, y = sft_batch([([1, 2, 3], [4, 5]), ([1, 2], [6])])
    >>> x.tolist(), y.tolist()
    ([[1, 2, 3, 4], [1, 2, 0, 0]], [[-1, -1, 4, 5], [-1, 6, -1, -1]])
    """
    T = max(len(p) + len(r) for p, r in examples) - 1
    x = np.full((len(examples), T), pad_id, dtype=np.int64)
    y = np.full((len(examples), T), -1, dtype=np.int64)
    for i, (prompt, response) in enumerate(examples):   # a loop over examples: data preparation
        ids = prompt + response
        n = len(ids) - 1
        x[i, :n], y[i, :n] = ids[:-1], ids[1:]
        if mask_prompt:
            y[i, :len(prompt) - 1] = -1                  # the prompt is given, not learned
    return x, y


def example_sampler(examples, tasks, batch_size, mask_prompt):
    """next_batch(rng) -> (x, y): each example drawn by choosing a task uniformly, then one of
    its examples (so a task with few records is seen as often as one with many)."""
    names, task_ids = np.unique(np.asarray(tasks), return_inverse=True)
    order = np.argsort(task_ids, kind="stable")          # examples grouped by task
    counts = np.bincount(task_ids)
    offsets = np.cumsum(counts) - counts

    def next_batch(rng):
        t = rng.integers(0, len(names), size=batch_size)                     # (B,) tasks
        picks = order[offsets[t] + (rng.random(batch_size) * counts[t]).astype(np.int64)]
        return sft_batch([examples[i] for i in picks], mask_prompt)
    return next_batch


def response_loss(model, examples, batch_size=32):
    """Mean cross-entropy of the response tokens of ``examples`` (evaluation mode)."""
    total, n = 0.0, 0
    for s in range(0, len(examples), batch_size):
        x, y = sft_batch(examples[s:s + batch_size], mask_prompt=True)
        loss, cache = cross_entropy_forward(model.forward(x), y)
        total, n = total + loss * cache.n, n + cache.n
    return total / n


# ----------------------------------------------------------------------------------------------
# Answers
# ----------------------------------------------------------------------------------------------

def greedy_decode(model, prompts, end_ids, max_new_tokens=None):
    """The greedy continuation of each prompt (a list of id lists) until it ends with
    ``end_ids`` (kept) or the context is full. Prompts of one length are decoded together, one
    KV cache for the group, one (G, 1) step per token. Returns a list of id lists."""
    block = model.config.block_size
    out, end = [None] * len(prompts), list(end_ids)
    groups = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    for n, rows in groups.items():
        limit = block - n if max_new_tokens is None else min(max_new_tokens, block - n)
        new = np.zeros((len(rows), 0), dtype=np.int64)                     # (G, generated)
        if limit > 0:
            cache = model.new_kv_cache(batch_size=len(rows))
            logits = model.forward(np.array([prompts[i] for i in rows]), kv_cache=cache,
                                   last_only=True)[:, -1]                     # (G, V)
        done = np.zeros(len(rows), dtype=bool)
        while new.shape[1] < limit and not done.all():
            token = logits.argmax(axis=-1)                                  # (G,)
            new = np.concatenate([new, token[:, None]], axis=1)
            if new.shape[1] >= len(end):
                done |= (new[:, -len(end):] == end).all(axis=1)
            if new.shape[1] < limit and not done.all():
                logits = model.forward(token[:, None], kv_cache=cache, last_only=True)[:, -1]
        for g, i in enumerate(rows):
            seq = new[g].tolist()
            for k in range(len(end), len(seq) + 1):                         # cut after the end
                if seq[k - len(end):k] == end:
                    seq = seq[:k]
                    break
            out[i] = seq
    return out


def exact_match(model, tokenizer, records, template=TEMPLATE, max_new_tokens=None):
    """({task: share of exact answers, ..., "all": share over every record}, responses): each
    record's greedy response (the text before the end marker) compared with its output."""
    prompts = [tokenizer.encode(template.prompt(r)) for r in records]
    texts = [tokenizer.decode(ids) for ids in
             greedy_decode(model, prompts, tokenizer.encode(template.end), max_new_tokens)]
    right = np.array([t == r["output"] + template.end for t, r in zip(texts, records)])
    tasks = [r["task"] for r in records]
    scores = {task: float(right[np.array(tasks) == task].mean()) for task in dict.fromkeys(tasks)}
    scores["all"] = float(right.mean())
    return scores, [t.split(template.end)[0] for t in texts]


def exact_report(scores, what="exact match"):
    """One line: "exact match: capitalise 0.95, reverse 0.80, ..., all 0.81"."""
    return f"{what}: " + ", ".join(f"{task} {value:.2f}" for task, value in scores.items())


def respond(model, tokenizer, record, template=TEMPLATE, max_new_tokens=200, **sampling):
    """Yield the response to ``record`` ({"instruction", "input"}) piece by piece as it is
    generated, stopping before the end marker (held back until it is known not to be one).
    ``sampling``: generate's temperature, top_k, top_p, greedy, rng."""
    ids = tokenizer.encode(template.prompt(record))
    text, sent, end = "", 0, template.end
    for piece in stream_decode(tokenizer, generate(model, ids, max_new_tokens, **sampling)):
        text += piece
        cut = text.find(end, max(sent - len(end), 0))
        if cut >= 0:
            yield text[sent:cut]
            return
        safe = len(text)                       # hold back a tail that may begin the marker
        for k in range(min(len(end) - 1, len(text)), 0, -1):
            if end.startswith(text[-k:]):
                safe = len(text) - k
                break
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    yield text[sent:]


# ----------------------------------------------------------------------------------------------
# A whole run (called by ``finetune`` with the folder locked and the base model loaded)
# ----------------------------------------------------------------------------------------------

def prepare_examples(config, model, tokenizer, log, template=TEMPLATE):
    """(model, tokenizer, added characters, parts of records, parts of examples) for
    ``config.data``: read, characters fitted (the template's added by themselves), encoded,
    and the examples longer than the context left out (saying so)."""
    parts = instruct_parts(config.data, config.split_seed, config.val_frac)
    log(f"data: {config.data}, " + ", ".join(f"{len(r):,} {n}" for n, r in parts.items())
        + " records; tasks: " + ", ".join(sorted({r["task"] for r in parts["train"]})))
    rng = np.random.default_rng((config.seed, 1))
    if config.map_chars and isinstance(tokenizer, CharTokenizer):
        parts = {name: [{**r, **{k: map_chars(r[k], tokenizer.stoi) for k in FIELDS}}
                        for r in records] for name, records in parts.items()}
    model, tokenizer, added = fit_vocabulary(model, tokenizer, template.characters(), True, rng)
    if added:
        log(f"vocabulary: the prompt template needs {len(added)} characters the model lacks "
            f"({list_chars(added)}); added them as new ids")
    text = "".join(r[k] for records in parts.values() for r in records for k in FIELDS)
    model, tokenizer, more = fit_vocabulary(
        model, tokenizer, text, config.extend_vocab, rng, what="the instruction records have",
        other="--map-chars to replace them by characters it knows")
    if more:
        log(f"vocabulary: added {len(more)} characters ({list_chars(more)})")
    T = model.config.block_size
    examples = {}
    for name, records in list(parts.items()):
        encoded = encode_records(records, template, tokenizer)
        keep = [i for i, (p, r) in enumerate(encoded) if len(p) + len(r) <= T + 1]
        if len(keep) < len(records):
            log(f"note: {len(records) - len(keep):,} of {len(records):,} {name} records are "
                f"longer than the context ({T + 1} tokens with the template) and are left out")
        if not keep:
            raise ValueError(f"every {name} record is longer than the model's context of {T} "
                             "tokens")
        parts[name] = [records[i] for i in keep]
        examples[name] = [encoded[i] for i in keep]
    return model, tokenizer, added + more, parts, examples


def finetune_instruct(config, optim_config, model, tokenizer, out_dir, log, progress):
    """Instruction-tune ``model`` on ``config.data`` (FinetuneConfig, task "instruct") in
    ``out_dir``; returns the fields of a FinetuneResult as a dict."""
    template = TEMPLATE
    model, tokenizer, added, parts, examples = prepare_examples(config, model, tokenizer, log,
                                                                template)
    log(f"loss on: {'the response tokens only' if config.mask_prompt else 'every token'} "
        f"(template {template.with_input!r}, end marker {template.end!r})")
    check_memory(model.config, config.batch_size, copies=2 if config.lora_rank else 5,
                 what="fine-tuning")
    trained, params, lora, trainable, total = learner(model, config, log, added)
    optimizer = AdamW.from_config(params, optim_config)
    task = {"task": "instruct", "template": template.to_dict(),
            "mask_prompt": bool(config.mask_prompt), "map_chars": bool(config.map_chars),
            "split": {"data": config.data, "seed": config.split_seed,
                      "val_frac": config.val_frac}}
    configs = {"finetune": asdict(config), "optim": asdict(optim_config),
               "lora": asdict(lora.config) if lora else None, "added_chars": added}

    def current():
        return lora.merge() if lora is not None else trained

    def save(state, name=None):
        if lora is not None and name is None:
            lora.save(out_dir / "adapters.safetensors")
        save_checkpoint(out_dir, current(), tokenizer, state={**state, "configs": configs},
                        task=task, **({"name": name} if name else {}))
        tokenizer.save(out_dir / TOKENIZER)

    n = config.eval_iters * config.batch_size
    val = [examples["val"][i] for i in sorted(np.random.default_rng((config.seed, 3)).choice(
        len(examples["val"]), size=min(n, len(examples["val"])), replace=False))]

    def measure(it):
        rng = np.random.default_rng((config.seed, it))
        rows = rng.choice(len(examples["train"]), size=min(n, len(examples["train"])),
                          replace=False)
        return {"train": response_loss(trained, [examples["train"][i] for i in rows],
                                       config.batch_size),
                "val": response_loss(trained, val, config.batch_size)}

    t0 = time.perf_counter()
    state = train_loop(trained, optimizer, {}, config, optim_config, new_state(config.seed), save,
                       progress=progress, block_size=0, save_best=lambda s: save(s, BEST),
                       next_batch=example_sampler(examples["train"],
                                                  [r["task"] for r in parts["train"]],
                                                  config.batch_size, config.mask_prompt),
                       measure=measure)
    seconds = time.perf_counter() - t0
    final = current()
    chosen = per_task(parts["val"], EXACT_PER_TASK, config.split_seed)
    scores, _ = exact_match(final, tokenizer, chosen, template)
    log(exact_report(scores, f"exact match on {len(chosen):,} validation records (greedy)"))
    metrics = {"val_exact_match": scores, "n": len(chosen), "iter": state["iter"]}
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return dict(model=final, tokenizer=tokenizer, state=state, base=model, lora=lora,
                trainable=trainable, total=total, added=added, seconds=seconds, task=task,
                metrics=metrics)
