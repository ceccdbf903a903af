"""Fine-tuning a GPT into a text classifier: what learns, the batches, the measurements, the
metrics, and labelling new text.

    trainable  what learns                               what one step runs
    head       the head (C -> K) alone                   logistic regression on pooled hidden
                                                         states, computed once (frozen model)
    top        the last k blocks, ln_f and the head      blocks L-k .. L-1 from their input,
                                                         computed once (frozen bottom)
    all        every weight of the GPT and the head      the whole model
    lora       LoRA adapters (--lora-targets), the head  the whole model, with W + s A B

A batch is B training texts drawn at random (the rows of ``Classifier.parts["train"]``),
right-padded to the longest; the loss is the cross-entropy of the K class logits
(``core/classifier.py``). The head's learning rate is its own (``head_lr``; it starts at zero),
following the same warmup and cosine schedule as the body's.

At the end the last state is measured on the test part (``metrics.classification_metrics``:
accuracy, per-class precision and recall, the confusion matrix), written to metrics.json.

Shape legend: N texts, B batch, T time, C channels, K classes, L n_layer.
"""
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..core.classifier import (HEAD, block_input, classifier_head_backward,
                               classifier_head_forward, init_head, pool_forward, top_backward,
                               top_forward)
from ..core.layers import (cross_entropy_backward, cross_entropy_forward, linear_backward,
                           linear_forward, softmax_forward)
from ..core.lora import LoRA
from ..core.model import GPT
from ..core.optim import AdamW
from ..formats.checkpoint import BEST, TOKENIZER, save_checkpoint
from ..formats.files import atomic_write_text
from ..tokenizers import CharTokenizer
from .adapt import fit_vocabulary, list_chars, lora_config
from .labelled import class_balance, encode_texts, load_labelled, map_chars, split_labelled
from .metrics import classification_metrics, metrics_report
from .train import available_memory, check_memory, new_state, train_loop

TRAINABLE = ("all", "top", "head", "lora")
METRICS = "metrics.json"          # test (and validation) metrics of the last state
ADAPTERS = "adapters.safetensors"


class Part(NamedTuple):
    ids: np.ndarray              # (N, T) token ids, right-padded
    lengths: np.ndarray          # (N,) real tokens of each text
    labels: np.ndarray           # (N,) class indices


# ----------------------------------------------------------------------------------------------
# Logits of a GPT with a head, and what a frozen model computes once
# ----------------------------------------------------------------------------------------------

def length_batches(lengths, batch_size):
    """Row batches in order of length (so a batch pads little): a list of index arrays."""
    order = np.argsort(lengths, kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def classifier_logits(model, head, ids, lengths, pool, batch_size=64):
    """Class logits (N, K) of a GPT with a head, in evaluation mode (no dropout)."""
    out = np.empty((len(lengths), head[HEAD[1]].shape[0]), dtype=model.dtype)
    for rows in length_batches(lengths, batch_size):
        L = lengths[rows]
        h, _ = model.forward_with_cache(ids[rows, :int(L.max())], lm_head=False)   # (B, T, C)
        out[rows] = classifier_head_forward(h, L, head[HEAD[0]], head[HEAD[1]], pool)[0]
    return out


def frozen_features(model, part, *, pools=(), first=None, batch_size=64):
    """One pass of the frozen ``model`` over every text of ``part``: {pool: the pooled final
    hidden states (N, C) for each of ``pools``, "residual": the residual stream entering block
    ``first`` (N, T, C), zero on padding, if ``first`` is given}."""
    N, T = part.ids.shape
    C = model.config.n_embd
    out = {pool: np.zeros((N, C), dtype=model.dtype) for pool in pools}
    if first is not None:
        out["residual"] = np.zeros((N, T, C), dtype=model.dtype)
    for rows in length_batches(part.lengths, batch_size):
        L = part.lengths[rows]
        n = int(L.max())
        h, cache = model.forward_with_cache(part.ids[rows, :n], lm_head=False)   # (B, n, C)
        for pool in pools:
            out[pool][rows] = pool_forward(h, L, pool)[0]
        if first is not None:
            out["residual"][rows, :n] = block_input(cache, first)
    return out


def feature_bytes(parts, config, trainable, top_blocks):
    """Bytes the frozen features of ``trainable`` take (0 for all and lora)."""
    n = sum(len(p.lengths) for p in parts.values())
    per_text = {"head": config.n_embd, "top": parts["train"].ids.shape[1] * config.n_embd}
    return n * per_text.get(trainable, 0) * np.dtype(config.dtype).itemsize


# ----------------------------------------------------------------------------------------------
# The classifier being trained
# ----------------------------------------------------------------------------------------------

class Classifier:
    """A GPT with a classification head, and what of it learns (``trainable``, see the module's
    doc). What ``train_loop`` trains: ``params`` (the arrays AdamW updates, head included),
    ``loss_and_grads(rows, labels, rng)`` on the training rows; ``logits(name)`` gives the class
    logits of a part, ``current()`` the plain (GPT, head) to save. ``model`` is only read.
    ``features`` ({part: frozen_features(...)}, with the pool, or "residual" of block L - k)
    saves the frozen pass when several classifiers share one model.

    >>> from minillm import GPTConfig
    >>> gpt = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_head=1, n_embd=4))
    >>> part = Part(np.array([[1, 2, 0, 0], [3, 4, 1, 2]]), np.array([2, 4]), np.array([0, 1]))
    >>> clf = Classifier(gpt, 2, {"train": part}, trainable="top")
    >>> sorted(clf.params)[:3], clf.logits("train").shape
    (['classifier.bias', 'classifier.weight', 'h.1.attn.c_attn.bias'], (2, 2))
    """

    def __init__(self, model, n_classes, parts, *, trainable="all", pool="mean", top_blocks=1,
                 lora_config=None, rng=None, features=None):
        if trainable not in TRAINABLE:
            raise ValueError(f"unknown trainable {trainable!r}; use one of {TRAINABLE}")
        config = model.config
        if trainable == "top" and not 1 <= top_blocks <= config.n_layer:
            raise ValueError(f"--top-blocks {top_blocks}: the model has {config.n_layer} blocks")
        self.trainable, self.pool, self.parts = trainable, pool, parts
        self.head = init_head(config.n_embd, n_classes, config.dtype)
        self.first = config.n_layer - top_blocks if trainable == "top" else None
        self.lora, self.model, body = None, model, {}
        if trainable in ("head", "top") and features is None:    # the frozen part runs once
            features = {name: frozen_features(model, part, pools=(pool,), first=self.first)
                        for name, part in parts.items()}
        if trainable in ("head", "top"):              # pooled (N, C) or residual (N, T, C)
            self.features = {name: f[pool if trainable == "head" else "residual"]
                             for name, f in features.items()}
        if trainable == "top":
            body = {name: p.copy() for name, p in model.params.items() if name.startswith(
                ("ln_f.",) + tuple(f"h.{i}." for i in range(self.first, config.n_layer)))}
        elif trainable == "all":                      # (an untied lm_head is not used here)
            body = {name: p.copy() for name, p in model.params.items() if name != "lm_head.weight"}
        elif trainable == "lora":
            self.lora = LoRA(model, lora_config, rng=rng)
            body = self.lora.adapters
        if trainable in ("top", "all"):
            self.model = GPT(config, params={**model.params, **body})
        self.params = {**body, **self.head}
        self.body_names = list(body)

    def num_trainable(self):
        return sum(p.size for p in self.params.values())

    def num_total(self):
        return self.model.num_params() + sum(p.size for p in self.head.values()) + (
            self.lora.num_trainable() if self.lora else 0)

    def loss_and_grads(self, rows, labels, *, train=True, rng=None):
        """Mean cross-entropy of the training texts ``rows`` (B,) against ``labels`` (B,), and
        the gradient of every array of ``params`` (``train``: dropout on, as in training; the
        signature of GPT.loss_and_grads, so data parallelism splits the rows like a batch)."""
        part, W, b = self.parts["train"], self.head[HEAD[0]], self.head[HEAD[1]]
        if self.trainable == "head":
            logits, linear_cache = linear_forward(self.features["train"][rows], W, b)   # (B, K)
        else:
            lengths = part.lengths[rows]
            T = int(lengths.max())
            if self.trainable == "top":
                h, top_cache = top_forward(self.model, self.features["train"][rows, :T],
                                           self.first, train=train, rng=rng)       # (B, T, C)
            else:
                net, merge_caches = (self.lora.merged_view() if self.lora else (self.model, None))
                h, gpt_cache = net.forward_with_cache(part.ids[rows, :T], train=train, rng=rng,
                                                      lm_head=False)              # (B, T, C)
            logits, head_cache = classifier_head_forward(h, lengths, W, b, self.pool)
        loss, ce_cache = cross_entropy_forward(logits, labels)
        dlogits = cross_entropy_backward(1.0, ce_cache)                           # (B, K)
        if self.trainable == "head":
            _, dW, db = linear_backward(dlogits, linear_cache)
            return loss, {HEAD[0]: dW, HEAD[1]: db}
        dh, dW, db = classifier_head_backward(dlogits, head_cache)                # (B, T, C)
        grads = {HEAD[0]: dW, HEAD[1]: db}
        if self.trainable == "top":
            grads.update(top_backward(self.model, dh, top_cache)[1])
        elif self.trainable == "all":
            g = self.model.backward(dh, gpt_cache)
            grads.update({name: g[name] for name in self.body_names})
        else:
            grads.update(self.lora.adapter_grads(net.backward(dh, gpt_cache), merge_caches))
        return loss, grads

    def logits(self, name, rows=None, batch_size=64):
        """Class logits (N, K) of part ``name`` (or of its ``rows``), evaluation mode."""
        part = self.parts[name]
        rows = np.arange(len(part.lengths)) if rows is None else rows
        W, b = self.head[HEAD[0]], self.head[HEAD[1]]
        if self.trainable == "head":
            return self.features[name][rows] @ W + b
        lengths = part.lengths[rows]
        if self.trainable != "top":
            model = self.lora.merged_view()[0] if self.lora else self.model
            return classifier_logits(model, self.head, part.ids[rows], lengths, self.pool,
                                     batch_size)
        out = np.empty((len(rows), b.shape[0]), dtype=W.dtype)
        for batch in length_batches(lengths, batch_size):
            T = int(lengths[batch].max())
            h, _ = top_forward(self.model, self.features[name][rows[batch], :T], self.first)
            out[batch] = classifier_head_forward(h, lengths[batch], W, b, self.pool)[0]
        return out

    def current(self):
        """(GPT, head): the model as trained so far as one plain GPT (LoRA: merged) and the
        head, for saving."""
        return (self.lora.merge() if self.lora else self.model), self.head


class HeadAndBody:
    """Two AdamWs on one dict of parameters: the head's learning rate is ``head_scale`` times
    the body's at every step (the body's follows the schedule; ``train_loop`` calls ``step``)."""

    def __init__(self, params, optim_config, head_scale):
        body = [k for k in params if k not in HEAD]
        self.head = AdamW.from_config(params, optim_config, keys=list(HEAD))
        self.body = AdamW.from_config(params, optim_config, keys=body) if body else None
        self.head_scale = float(head_scale)

    def step(self, grads, lr=None, run=None):
        self.head.step(grads, lr=lr * self.head_scale, run=run)
        if self.body is not None:
            self.body.step(grads, lr=lr, run=run)


def batch_sampler(part, batch_size):
    """next_batch(rng) -> (rows, labels): ``batch_size`` training texts drawn at random."""
    def next_batch(rng):
        rows = rng.integers(0, len(part.labels), size=batch_size)
        return rows, part.labels[rows]
    return next_batch


def measurer(clf, seed, n_train):
    """measure(it) -> {"train": loss, "val": loss, "val_accuracy": accuracy}: the validation
    part whole, and ``n_train`` training texts drawn by a generator seeded by (seed, it)."""
    def measure(it):
        train, val = clf.parts["train"], clf.parts["val"]
        rows = np.random.default_rng((seed, it)).choice(len(train.labels), replace=False,
                                                        size=min(n_train, len(train.labels)))
        val_logits = clf.logits("val")
        return {"train": cross_entropy_forward(clf.logits("train", rows), train.labels[rows])[0],
                "val": cross_entropy_forward(val_logits, val.labels)[0],
                "val_accuracy": float((val_logits.argmax(axis=1) == val.labels).mean())}
    return measure


# ----------------------------------------------------------------------------------------------
# Labelling new text with a saved classifier
# ----------------------------------------------------------------------------------------------

def prepare_texts(texts, tokenizer, task, block_size):
    """(ids (N, T), lengths (N,)) of new texts, read as the classifier's training texts were:
    mapped if it was trained with --map-chars, truncated the same way; a character a character
    model lacks is a ValueError listing it."""
    texts = [t.strip() for t in texts]
    if not texts or not all(texts):
        raise ValueError("give at least one non-empty text to classify")
    if isinstance(tokenizer, CharTokenizer):
        if task.get("map_chars"):
            texts = [map_chars(t, tokenizer.stoi) for t in texts]
        missing = tokenizer.missing("".join(texts))
        if missing:
            raise ValueError(f"the text has characters the model's vocabulary lacks: "
                             f"{', '.join(repr(c) for c in missing[:20])}")
    return encode_texts(texts, tokenizer, block_size, task.get("keep", "last"))


def classify_texts(model, head, task, tokenizer, texts):
    """(labels, probabilities): the predicted label name of each text and its probability.

    >>> labels, probs = classify_texts(model, head, task, tokenizer, ["Great!"])  # doctest: +SKIP
    """
    ids, lengths = prepare_texts(texts, tokenizer, task, model.config.block_size)
    probs, _ = softmax_forward(classifier_logits(model, head, ids, lengths, task["pool"]))
    best = probs.argmax(axis=1)
    return [task["labels"][k] for k in best], probs[np.arange(len(best)), best]


# ----------------------------------------------------------------------------------------------
# A whole run (called by ``finetune`` with the folder locked and the base model loaded)
# ----------------------------------------------------------------------------------------------

def prepare_parts(config, model, tokenizer, log):
    """(model, tokenizer, added characters, label names, {"train", "val", "test"}: Part): the
    labelled data of ``config.data`` read, its characters fitted to the vocabulary, split and
    encoded, with what was done logged."""
    data = load_labelled(config.data)
    texts = data.texts
    log(f"data: {data.description}, {len(data.names)} classes: {', '.join(data.names)}")
    if config.map_chars and isinstance(tokenizer, CharTokenizer):
        missing = tokenizer.missing("".join(texts))
        if missing:
            texts = [map_chars(t, tokenizer.stoi) for t in texts]
            log(f"characters: --map-chars replaced {len(missing)} the vocabulary lacks "
                f"({list_chars(missing)})")
    model, tokenizer, added = fit_vocabulary(
        model, tokenizer, "".join(texts), config.extend_vocab,
        np.random.default_rng((config.seed, 1)), what="the labelled texts have",
        other="--map-chars to replace them by characters it knows")
    if added:
        log(f"vocabulary: added {len(added)} characters ({list_chars(added)}) as ids "
            f"{tokenizer.vocab_size - len(added)}..{tokenizer.vocab_size - 1}")
    split = split_labelled(data, config.split_seed, config.val_frac, config.test_frac)
    by = "class and source" if len(np.unique(data.groups)) > 1 else "class"
    log(f"split: {len(split['train']):,} train, {len(split['val']):,} validation, "
        f"{len(split['test']):,} test texts (stratified by {by}, seed {config.split_seed}); "
        "classes:\n" + class_balance(data.labels, data.names, split))
    T = model.config.block_size
    ids, lengths = encode_texts(texts, tokenizer, T, config.keep)
    full = int((lengths == T).sum())
    if full:
        log(f"context: {full:,} of {len(texts):,} texts fill the {T} tokens of the context "
            f"(longer ones keep their {config.keep} {T})")
    parts = {name: Part(ids[rows], lengths[rows], data.labels[rows])
             for name, rows in split.items()}
    return model, tokenizer, added, data.names, parts


def finetune_classifier(config, optim_config, model, tokenizer, out_dir, log, progress):
    """Fine-tune ``model`` into a classifier of ``config.data`` (FinetuneConfig, task
    "classify") in ``out_dir``; returns the fields of a FinetuneResult as a dict."""
    model, tokenizer, added, names, parts = prepare_parts(config, model, tokenizer, log)
    trainable = "lora" if config.lora_rank else config.trainable
    if trainable in ("all", "lora"):
        check_memory(model.config, config.batch_size, copies=5, what="fine-tuning")
    need, have = feature_bytes(parts, model.config, trainable, config.top_blocks), \
        available_memory()
    if have is not None and need > have // 2:
        raise ValueError(f"--trainable {trainable} keeps the frozen model's features of every "
                         f"text, {need / 2.0 ** 30:.1f} GiB, more than half the memory available; "
                         "use fewer texts or --trainable all")
    t_features = time.perf_counter()
    clf = Classifier(model, len(names), parts, trainable=trainable, pool=config.pool,
                     top_blocks=config.top_blocks, rng=np.random.default_rng((config.seed, 2)),
                     lora_config=lora_config(config) if trainable == "lora" else None)
    if trainable in ("head", "top"):
        log(f"frozen features: one pass over the {sum(len(p.labels) for p in parts.values()):,} "
            f"texts in {time.perf_counter() - t_features:.1f} s")
    what = {"head": "the head", "top": f"the last {config.top_blocks} block(s), ln_f and the head",
            "all": "every weight and the head", "lora": "LoRA adapters and the head"}[trainable]
    log(f"trainable parameters: {clf.num_trainable():,} of {clf.num_total():,} "
        f"({100 * clf.num_trainable() / clf.num_total():.2f}%): {what}, {config.pool} pooling")
    optimizer = HeadAndBody(clf.params, optim_config, config.head_lr / config.learning_rate)
    task = {"task": "classify", "labels": list(names), "pool": config.pool, "keep": config.keep,
            "map_chars": bool(config.map_chars), "trainable": trainable,
            "split": {"data": config.data, "seed": config.split_seed,
                      "val_frac": config.val_frac, "test_frac": config.test_frac}}
    configs = {"finetune": asdict(config), "optim": asdict(optim_config),
               "lora": asdict(clf.lora.config) if clf.lora else None, "added_chars": added}

    def save(state, name=None):
        gpt, head = clf.current()
        if clf.lora is not None and name is None:
            clf.lora.save(out_dir / ADAPTERS)
        save_checkpoint(out_dir, gpt, tokenizer, state={**state, "configs": configs}, head=head,
                        task=task, **({"name": name} if name else {}))
        tokenizer.save(out_dir / TOKENIZER)

    t0 = time.perf_counter()
    state = train_loop(clf, optimizer, {}, config, optim_config, new_state(config.seed), save,
                       progress=progress, save_best=lambda state: save(state, BEST),
                       next_batch=batch_sampler(parts["train"], config.batch_size),
                       measure=measurer(clf, config.seed, config.eval_iters * config.batch_size))
    seconds = time.perf_counter() - t0
    metrics = {name: classification_metrics(clf.logits(name), parts[name].labels, names)
               for name in ("val", "test")}
    metrics["iter"] = state["iter"]
    log(metrics_report(metrics["test"], f"test (the last state, iteration {state['iter']})"))
    atomic_write_text(Path(out_dir) / METRICS, json.dumps(metrics, indent=1) + "\n")
    gpt, head = clf.current()
    return dict(model=gpt, tokenizer=tokenizer, state=state, base=model, lora=clf.lora,
                trainable=clf.num_trainable(), total=clf.num_total(), added=added,
                seconds=seconds, head=head, task=task, metrics=metrics)
