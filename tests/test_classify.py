"""Fine-tuning into a classifier (minillm/training/classify.py and finetune --task classify):
the gradient of every trainable mode, a frozen base, features equal to the model, a run that
learns, the checkpoint with its head and labels, the classify and eval commands, errors."""
import json

import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.cli import main
from minillm.core.classifier import HEAD
from minillm.core.gradcheck import grad_errors
from minillm.core.lora import LoRAConfig
from minillm.formats.checkpoint import load_checkpoint, load_task_model
from minillm.training.classify import (Classifier, Part, classifier_logits, classify_texts,
                                       frozen_features)
from minillm.training.finetune import FinetuneConfig, finetune
from minillm.training.metrics import confusion_matrix, precision_recall

TINY = dict(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=8, dtype="float64")


def silent(*_):
    pass


class NoProgress:
    def update(self, *a):
        pass

    def message(self, *a):
        pass


def synthetic(n=240, seed=0):
    """Reviews whose last word says the class (letters and '.' only)."""
    rng = np.random.default_rng(seed)
    pos, neg = ["good", "great", "lovely", "nice"], ["bad", "awful", "poor", "dull"]
    fill = ["the food was", "our visit was", "service is", "it was really", "this place is"]
    return [(f"{fill[rng.integers(5)]} {(pos if i % 2 else neg)[rng.integers(4)]}.",
             "positive" if i % 2 else "negative") for i in range(n)]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("reviews") / "reviews.tsv"
    path.write_text("".join(f"{t}\t{label}\n" for t, label in synthetic()), encoding="utf-8")
    return path


def config(base, data, out, **kw):
    values = dict(task="classify", init_from=str(base), data=str(data), out_dir=str(out),
                  max_iters=60, batch_size=16, learning_rate=3e-3, min_lr=3e-4, head_lr=1e-2,
                  eval_interval=30, eval_iters=2, sample_tokens=0)
    return FinetuneConfig(**{**values, **kw})


def tiny_parts(rng, n=6):
    lengths = rng.integers(1, 9, size=n)
    ids = rng.integers(0, 11, size=(n, 8)) * (np.arange(8)[None, :] < lengths[:, None])
    return {"train": Part(ids, lengths, rng.integers(0, 3, size=n))}


@pytest.mark.parametrize("trainable", ["all", "top", "head", "lora"])
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_every_mode_gradient_check(trainable, pool):
    rng = np.random.default_rng(0)
    model = GPT(GPTConfig(**TINY), seed=1)
    parts = tiny_parts(rng)
    clf = Classifier(model, 3, parts, trainable=trainable, pool=pool, top_blocks=2, rng=rng,
                     lora_config=LoRAConfig(rank=2, alpha=2.0, targets="attn.c_attn,mlp.c_fc"))
    for p in clf.params.values():
        p += rng.normal(scale=0.3, size=p.shape)         # head and B away from zero
    rows, labels = np.array([0, 2, 3, 5]), np.array([0, 1, 2, 1])
    _, grads = clf.loss_and_grads(rows, labels)
    assert set(grads) == set(clf.params)
    errors = grad_errors(lambda: clf.loss_and_grads(rows, labels)[0], clf.params, grads,
                         config=model.config)
    assert max(v for k, v in errors.items() if "(keys)" not in k) < 1e-7, errors
    expected = {"head": 2, "top": 2 + 2 * 12 + 2, "all": 2 + 3 * 12 + 4, "lora": 2 + 3 * 4}
    assert len(clf.params) == expected[trainable]        # what learns, and nothing else


@pytest.mark.parametrize("trainable", ["all", "top", "head", "lora"])
def test_the_base_model_is_only_read(trainable):
    rng = np.random.default_rng(1)
    model = GPT(GPTConfig(**TINY), seed=1)
    before = {k: v.copy() for k, v in model.params.items()}
    clf = Classifier(model, 3, tiny_parts(rng), trainable=trainable, rng=rng,
                     lora_config=LoRAConfig(rank=2))
    for _ in range(3):
        _, grads = clf.loss_and_grads(np.arange(4), np.array([0, 1, 2, 0]))
        for k, g in grads.items():
            clf.params[k] -= 0.1 * g
    assert all(np.array_equal(model.params[k], v) for k, v in before.items())
    gpt, head = clf.current()
    assert head[HEAD[0]].any()                           # the head did learn
    changed = [k for k in before if not np.array_equal(gpt.params[k], before[k])]
    assert bool(changed) == (trainable != "head")


@pytest.mark.parametrize("trainable", ["head", "top"])
def test_frozen_features_give_the_models_logits(trainable):
    rng = np.random.default_rng(2)
    model = GPT(GPTConfig(**TINY), seed=1)
    parts = tiny_parts(rng)
    clf = Classifier(model, 3, parts, trainable=trainable, top_blocks=1, rng=rng)
    for p in clf.head.values():
        p += rng.normal(size=p.shape)
    gpt, head = clf.current()
    part = parts["train"]
    direct = classifier_logits(gpt, head, part.ids, part.lengths, "mean")
    assert np.allclose(clf.logits("train"), direct, rtol=1e-12, atol=1e-12)
    pooled = frozen_features(model, part, pools=("mean",))["mean"]
    assert np.allclose(pooled @ head[HEAD[0]] + head[HEAD[1]], direct, rtol=1e-12, atol=1e-12)


def test_a_run_learns_and_saves_a_classifier(char_base, reviews, tmp_path, capsys):
    lines = []
    result = finetune(config(char_base, reviews, tmp_path / "clf"), log=lines.append,
                      progress=NoProgress())
    log = "\n".join(lines)
    assert "240 texts" in log and "2 classes: negative, positive" in log
    assert "192 train, 24 validation, 24 test texts (stratified by class, seed 0)" in log
    assert "negative" in log and "test (the last state, iteration 60) accuracy" in log
    test = result.metrics["test"]
    assert test["accuracy"] > 0.8 and test["n"] == 24                # chance is 0.5
    assert np.sum(test["confusion"]) == 24
    history = result.state["history"]
    assert [row[0] for row in history["eval_extra"]["val_accuracy"]] == [0, 30, 60]
    assert history["eval_extra"]["val_accuracy"][0][1] == 0.5       # a zero head: one class
    saved = json.loads((tmp_path / "clf" / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == test["accuracy"]
    ckpt = load_checkpoint(tmp_path / "clf")
    assert ckpt.task["labels"] == ["negative", "positive"] and ckpt.task["pool"] == "mean"
    assert all(np.array_equal(ckpt.head[k], result.head[k]) for k in HEAD)
    assert (tmp_path / "clf" / "best.safetensors").is_file()
    assert load_checkpoint(tmp_path / "clf" / "best.safetensors").head is not None

    # labelling new text: the command and the function agree
    texts = ["the food was lovely.", "service is awful."]
    labels, probs = classify_texts(ckpt.model, ckpt.head, ckpt.task, ckpt.tokenizer, texts)
    assert labels == ["positive", "negative"]
    assert main(["classify", "--ckpt", str(tmp_path / "clf"), *texts]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == labels
    assert [float(line.split("\t")[1]) for line in out] == pytest.approx(probs, abs=6e-4)

    # eval on the test part remakes the split and gives the run's own test metrics
    assert main(["eval", "--ckpt", str(tmp_path / "clf"), "--data", str(reviews),
                 "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy: {test['accuracy']:.4f} (24 texts)" in out
    assert "confusion (rows: true, columns: predicted)" in out


def test_classify_reads_standard_input(char_base, reviews, tmp_path, capsys, monkeypatch):
    import io
    finetune(config(char_base, reviews, tmp_path / "clf", max_iters=5, eval_interval=5,
                    trainable="head"), log=silent, progress=NoProgress())
    monkeypatch.setattr("sys.stdin", io.StringIO("nice.\n\nbad place.\n"))
    assert main(["classify", "--ckpt", str(tmp_path / "clf")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == ["nice.", "bad place."]


def test_the_command_line_run_draws_its_pictures(char_base, reviews, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["finetune", "--task", "classify", "--init-from", str(char_base), "--data",
                 str(reviews), "--out-dir", str(out), "--max-iters", "4", "--eval-interval",
                 "2", "--trainable", "top", "--pool", "last"]) == 0
    text = capsys.readouterr().out
    assert "confusion.png" in text and "python -m minillm classify --ckpt" in text
    for name in ("checkpoint.safetensors", "best.safetensors", "loss.png", "confusion.png",
                 "metrics.json"):
        assert (out / name).is_file(), name
    assert load_task_model(out)[3]["pool"] == "last"


def test_missing_characters_are_listed_unless_mapped_or_added(char_base, tmp_path):
    data = tmp_path / "odd.tsv"
    data.write_text("".join(f"{t} #5\t{label}\n" for t, label in synthetic(40)), "utf-8")
    with pytest.raises(ValueError, match=r"texts have 2 characters the model's vocabulary lacks: "
                                         r"'#', '5'; pass --extend-vocab .*--map-chars"):
        finetune(config(char_base, data, tmp_path / "a"), log=silent, progress=NoProgress())
    lines = []
    finetune(config(char_base, data, tmp_path / "b", max_iters=2, map_chars=True),
             log=lines.append, progress=NoProgress())
    assert any("--map-chars replaced 2" in line for line in lines)
    # '5' has nothing known to become (no '3' here), '#' neither: spaces; the model is unchanged
    V = load_checkpoint(char_base).model.config.vocab_size
    assert load_checkpoint(tmp_path / "b").model.config.vocab_size == V
    result = finetune(config(char_base, data, tmp_path / "c", max_iters=2, extend_vocab=True),
                      log=silent, progress=NoProgress())
    assert result.added == ["#", "5"] and result.model.config.vocab_size == V + 2


@pytest.mark.parametrize("settings, message", [
    (dict(task="text", trainable="top"), "--trainable top is for --task classify"),
    (dict(trainable="lora"), "--trainable lora needs --lora-rank"),
    (dict(trainable="head", lora_rank=4), "does not go with --trainable head"),
    (dict(export_pretrained="hf"), "a classifier's head has no place"),
    (dict(val_frac=0.5, test_frac=0.5), "leave nothing to train on"),
    (dict(watch_data="x.txt"), "--watch-data is for --task text"),
])
def test_settings_that_cannot_work_are_refused(char_base, reviews, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        finetune(config(char_base, reviews, tmp_path / "x", **settings), log=silent)
    assert not (tmp_path / "x").exists()


def test_too_many_top_blocks(char_base, reviews, tmp_path):
    with pytest.raises(ValueError, match="--top-blocks 3: the model has 2 blocks"):
        finetune(config(char_base, reviews, tmp_path / "x", trainable="top", top_blocks=3),
                 log=silent, progress=NoProgress())


def test_classify_refuses_a_language_model(char_base, capsys):
    assert main(["classify", "--ckpt", str(char_base), "hello"]) == 1
    assert "is not a classifier" in capsys.readouterr().err


def test_confusion_matrix_precision_and_recall():
    matrix = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 1, 1]), 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    precision, recall = precision_recall(matrix)
    assert precision.tolist() == pytest.approx([1.0, 0.5, 0.0])      # class 2: never predicted
    assert recall.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
