"""Training checkpoints (minillm/formats/checkpoint.py): what a run saves, refused when damaged
or not matching the model, and load_model reading either kind of folder."""
import json

import numpy as np
import pytest

from minillm import GPT, BPETokenizer, CharTokenizer, GPTConfig
from minillm.cli import main
from minillm.formats import safetensors
from minillm.formats.checkpoint import CHECKPOINT, load_checkpoint, load_model, save_checkpoint
from minillm.core.optim import AdamW

CONFIG = GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def run(tmp_path):
    """A run folder holding a checkpoint with AdamW state; returns (folder, model, tokenizer)."""
    model, tokenizer = GPT(CONFIG, seed=3), CharTokenizer.from_text("abcdefghijklmnopqrst")
    optimizer = AdamW(model.params)
    optimizer.step({k: np.ones_like(v) for k, v in model.params.items()})
    save_checkpoint(tmp_path, model, tokenizer, optimizer=optimizer,
                    state={"iter": 7, "history": {}})
    return tmp_path, model, tokenizer


def test_round_trip_holds_everything(run):
    folder, model, tokenizer = run
    ckpt = load_checkpoint(folder)
    assert ckpt.path == folder / CHECKPOINT and ckpt.state["iter"] == 7
    assert ckpt.model.config == model.config and ckpt.tokenizer == tokenizer
    assert list(ckpt.model.params) == list(model.params)             # GPT-2's order
    for name, p in model.params.items():
        np.testing.assert_array_equal(ckpt.model.params[name], p)
    assert ckpt.adam["t"] == 1 and set(ckpt.adam["m"]) == set(model.params)
    assert load_checkpoint(folder, dtype="float64").model.dtype == np.float64


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_gives_a_clear_error(run, damage, capsys):
    tmp_path = run[0]
    path = tmp_path / "checkpoint.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty": b""}[damage])
    with pytest.raises(ValueError, match="checkpoint.safetensors"):
        load_checkpoint(tmp_path)
    assert main(["sample", "--ckpt", str(tmp_path)]) == 1
    assert "checkpoint.safetensors" in capsys.readouterr().err


def write_checkpoint(path, tensors, metadata):
    """A checkpoint written by hand (format 1 has no checksums, so anything can be in it)."""
    safetensors.save_file(tensors, path, metadata={**metadata, "format": "minillm-checkpoint-1"})
    return path


def parts(run):
    """The tensors and metadata of the fixture's checkpoint, to be changed by a test."""
    folder = run[0]
    tensors, meta = safetensors.load_with_metadata(folder / CHECKPOINT)
    del meta["sha256"]
    return tensors, meta


def test_checkpoint_that_does_not_match_the_model(run, tmp_path):
    tensors, meta = parts(run)
    del tensors["params.ln_f.bias"]
    write_checkpoint(tmp_path / "a.safetensors", tensors, meta)
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): ln_f\.bias"):
        load_checkpoint(tmp_path / "a.safetensors")
    tensors["params.ln_f.bias"] = np.zeros(5, dtype=np.float32)
    write_checkpoint(tmp_path / "a.safetensors", tensors, meta)
    with pytest.raises(ValueError, match=r"'ln_f.bias' has shape \(5,\), expected \(16,\)"):
        load_checkpoint(tmp_path / "a.safetensors")


def test_save_never_writes_what_load_would_refuse(run, tmp_path):
    _, model, tokenizer = run
    cases = [
        (dict(tokenizer=CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz")),
         "the tokenizer has 26 tokens, the model only 20"),
        (dict(state={"iter": "7"}), "'iter' must be an integer >= 0, got '7'"),
        (dict(state={"history": {"train": ["x"]}}), "'history' 'train' must hold numbers"),
        (dict(state={"when": object()}), "cannot be saved as JSON"),
    ]
    for change, message in cases:
        args = {"tokenizer": tokenizer, **change}
        with pytest.raises(ValueError, match=message):
            save_checkpoint(tmp_path / "new", model, args["tokenizer"], state=args.get("state"))
    broken = GPT(CONFIG, params={**model.params, "wte.weight": np.full((20, 16), np.nan,
                                                                        np.float32)})
    with pytest.raises(ValueError, match="'wte.weight' holds NaN or infinite values"):
        save_checkpoint(tmp_path / "new", broken, tokenizer)
    del model.params["ln_f.bias"]
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): ln_f\.bias"):
        save_checkpoint(tmp_path / "new", model, tokenizer)
    assert not (tmp_path / "new").exists()                      # nothing was written


def test_a_flipped_bit_anywhere_is_a_damaged_file(run, tmp_path):
    folder = run[0]
    good = (folder / CHECKPOINT).read_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    rng = np.random.default_rng(0)
    positions = list(rng.integers(0, len(good), size=150)) + [header_end, len(good) - 1]
    for position in positions:
        bit = int(rng.integers(0, 8))
        damaged = bytearray(good)
        damaged[position] ^= 1 << bit
        path = tmp_path / "c.safetensors"
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value), (position, bit, str(e.value))
        if position >= header_end:                              # a tensor's bytes
            assert "is damaged: tensor 'adam." in str(e.value) or \
                "is damaged: tensor 'params." in str(e.value)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.uint8])
def test_a_tensor_that_is_not_float_is_refused_not_cast(run, tmp_path, dtype):
    for name in ("params.wte.weight", "adam.v.wte.weight"):
        tensors, meta = parts(run)
        tensors[name] = np.ones(tensors[name].shape, dtype=dtype)
        path = write_checkpoint(tmp_path / "c.safetensors", tensors, meta)
        with pytest.raises(ValueError, match=f"'wte.weight' has dtype {np.dtype(dtype)}, "
                                             "expected floats"):
            load_checkpoint(path)


def model_config(**changes):
    return json.dumps({**CONFIG.to_dict(), **changes})


METADATA = [   # id, metadata entries replaced, message: 16 wrong or missing entries
    ("format-missing", {"format": None}, "not a minillm checkpoint (format None)"),
    ("config-not-json", {"model_config": "{oops"}, "'model_config' is not JSON"),
    ("config-missing", {"model_config": None}, "no 'model_config' entry"),
    ("config-a-list", {"model_config": "[1, 2]"}, "model config: expected an object"),
    ("config-no-n_head", {"model_config": json.dumps(
        {k: v for k, v in CONFIG.to_dict().items() if k != "n_head"})}, "missing n_head"),
    ("config-unknown-key", {"model_config": model_config(n_experts=8)},
     "unknown setting(s) 'n_experts'"),
    ("config-string-int", {"model_config": model_config(n_layer="1")},
     "n_layer must be an integer >= 1, got '1'"),
    ("config-string-float", {"model_config": model_config(dropout="x")},
     "dropout must be a number in [0, 1), got 'x'"),
    ("config-number-str", {"model_config": model_config(pos_encoding=5)},
     "pos_encoding must be a non-empty string, got 5"),
    ("config-null", {"model_config": model_config(vocab_size=None)},
     "vocab_size must be an integer >= 1, got None"),
    ("tokenizer-a-string", {"tokenizer": '"abc"'}, "tokenizer should hold a JSON object"),
    ("tokenizer-no-chars", {"tokenizer": '{"type": "char"}'}, "has no 'chars' list"),
    ("state-a-list", {"state": "[]"}, "damaged run state: expected an object, got list"),
    ("state-iter-string", {"state": '{"iter": "7"}'}, "'iter' must be an integer >= 0"),
    ("state-history-string", {"state": '{"history": "x"}'}, "'history' must be an object"),
    ("state-eval-rows", {"state": '{"history": {"eval": [[1, 2]]}}'},
     "'eval' must hold [iteration, train loss, val loss] rows"),
    ("state-best-val", {"state": '{"best_val": "low"}'}, "'best_val' must be a number"),
    ("state-adam-t", {"state": '{"adam_t": -1}'}, "'adam_t' must be an integer >= 0"),
    ("state-rng", {"state": '{"rng": 5}'}, "'rng' must be an object"),
    ("state-nested", {"state": "[" * 100000}, "'state' is not JSON"),
]


@pytest.mark.parametrize("checksums", [False, True], ids=["format-1", "format-2"])
@pytest.mark.parametrize("entries, message", [pytest.param(*c[1:], id=c[0]) for c in METADATA])
def test_metadata_with_wrong_types_is_refused_naming_the_entry(run, tmp_path, entries, message,
                                                              checksums, capsys):
    tensors, meta = parts(run)                    # (with checksums: made on purpose, not damaged)
    meta = {**meta, "format": f"minillm-checkpoint-{1 + checksums}", **entries}
    meta = {k: v for k, v in meta.items() if v is not None}
    safetensors.save_file(tensors, tmp_path / CHECKPOINT, metadata=meta, checksums=checksums)
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path)
    assert message in str(e.value) and str(tmp_path / CHECKPOINT) in str(e.value)
    assert main(["sample", "--ckpt", str(tmp_path), "--max-new-tokens", "2"]) == 1
    assert message in capsys.readouterr().err


def test_a_checkpoint_of_the_current_format_must_have_its_checksums(run, tmp_path):
    tensors, meta = parts(run)
    safetensors.save_file(tensors, tmp_path / CHECKPOINT, metadata=meta)   # without them
    with pytest.raises(ValueError, match="is damaged: a minillm-checkpoint-2 file has checksums"):
        load_checkpoint(tmp_path)


def test_negative_second_moments_and_unknown_tensors_are_refused(run, tmp_path):
    tensors, meta = parts(run)
    tensors["adam.v.ln_f.bias"] = -np.ones(16, np.float32)
    write_checkpoint(tmp_path / "a.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="second moment of 'ln_f.bias' holds negative values"):
        load_checkpoint(tmp_path / "a.safetensors")
    tensors, meta = parts(run)
    tensors["extra"] = np.ones(2, np.float32)
    write_checkpoint(tmp_path / "a.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="unexpected tensor 'extra'"):
        load_checkpoint(tmp_path / "a.safetensors")


def test_tensors_and_metadata_come_from_one_open_file(run, monkeypatch):
    folder = run[0]
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(safetensors, "open", counting_open, raising=False)
    load_checkpoint(folder)
    assert opened == [str(folder / CHECKPOINT)]


def test_a_saved_checkpoint_has_checksums_of_every_tensor_and_the_metadata(run):
    meta = safetensors.read_metadata(run[0] / CHECKPOINT)
    assert meta["format"] == "minillm-checkpoint-2"
    sums = json.loads(meta["sha256"])
    assert set(sums["tensors"]) == set(safetensors.read_header(run[0] / CHECKPOINT))
    assert len(sums["metadata"]) == 64

def test_llama_style_checkpoint_round_trip(tmp_path):
    config = GPTConfig.llama(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model, tokenizer = GPT(config, seed=3), CharTokenizer.from_text("abcdefghijklmnopqrst")
    save_checkpoint(tmp_path, model, tokenizer)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.model.config == config and list(ckpt.model.params) == list(model.params)
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(ckpt.model.forward(idx), model.forward(idx))


def test_checkpoint_of_an_older_version_loads_with_the_old_defaults(run):
    """A checkpoint written before the Llama-style options existed has none of them in its
    model_config: it loads as the GPT-2 block it is."""
    folder, model, _ = run
    path = folder / CHECKPOINT
    meta = safetensors.read_metadata(path)
    old = {k: v for k, v in json.loads(meta["model_config"]).items()
           if k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout",
                    "pos_encoding", "dtype")}
    tensors = safetensors.load_file(path)
    meta = {k: v for k, v in meta.items() if k != safetensors.CHECKSUMS}
    safetensors.save_file(tensors, path, metadata={**meta, "model_config": json.dumps(old)},
                          checksums=True)
    ckpt = load_checkpoint(folder)
    assert ckpt.model.config == model.config == GPTConfig(**old)
    np.testing.assert_array_equal(ckpt.model.forward(np.array([[1, 2]])),
                                  model.forward(np.array([[1, 2]])))


def test_load_model_reads_both_kinds_of_folder(run, tmp_path):
    folder, model, _ = run
    loaded, _, kind = load_model(folder)
    assert kind == "minillm"
    bpe = BPETokenizer.train("the quick brown fox " * 10, 270)
    gpt2 = GPT(GPTConfig(vocab_size=270, block_size=8, n_layer=1, n_head=1, n_embd=8))
    gpt2.save_pretrained(tmp_path / "gpt2", bpe)
    loaded, tok, kind = load_model(tmp_path / "gpt2")
    assert kind == "gpt2" and tok.encode("the fox") == bpe.encode("the fox")
    (tmp_path / "gpt2" / "vocab.json").unlink()
    (tmp_path / "gpt2" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no vocab.json/merges.txt"):
        load_model(tmp_path / "gpt2")
    with pytest.raises(FileNotFoundError, match="neither a minillm checkpoint folder"):
        load_model(tmp_path / "nothing")


CLASSIFY = {"task": "classify", "labels": ["no", "yes", "maybe"], "pool": "mean"}


def classifier_head(K=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"classifier.weight": rng.normal(size=(16, K)).astype(np.float32),
            "classifier.bias": rng.normal(size=K).astype(np.float32)}


def test_a_classifier_keeps_its_head_and_labels(run, tmp_path):
    _, model, tokenizer = run
    head = classifier_head()
    save_checkpoint(tmp_path / "clf", model, tokenizer, head=head, task=CLASSIFY)
    ckpt = load_checkpoint(tmp_path / "clf")
    assert ckpt.task == CLASSIFY
    assert all(np.array_equal(ckpt.head[k], head[k]) for k in head)
    assert all(np.array_equal(ckpt.model.params[k], v) for k, v in model.params.items())
    assert load_checkpoint(run[0]).task is None and load_checkpoint(run[0]).head is None
    instruct = {"task": "instruct", "template": {"with_input": "Q: {instruction}: {input}\nA: ",
                                                 "without_input": "Q: {instruction}\nA: ",
                                                 "end": "\n\n"}}
    save_checkpoint(tmp_path / "sft", model, tokenizer, task=instruct)
    assert load_checkpoint(tmp_path / "sft").task == instruct


@pytest.mark.parametrize("head, task, message", [
    ("head", None, "a classification head but no task"),
    (None, CLASSIFY, "missing 2 tensor"),
    ("wrong", CLASSIFY, r"tensor 'classifier.weight' has shape \(16, 2\), expected \(16, 3\)"),
    ("head", {**CLASSIFY, "labels": ["no", "no", "yes"]}, "two or more distinct names"),
    ("head", {**CLASSIFY, "pool": "max"}, "'pool' must be one of"),
    ("head", {"task": "text"}, "a 'text' model has no classification head"),
    (None, {"task": "poetry"}, "whose 'task' is one of"),
    (None, {"task": "instruct", "template": {"end": ""}}, "'template' must be an object"),
])
def test_a_task_that_does_not_fit_is_refused_on_save_and_load(run, tmp_path, head, task, message):
    _, model, tokenizer = run
    tensors = {"head": classifier_head(), "wrong": classifier_head(K=2), None: None}[head]
    with pytest.raises(ValueError, match=message):
        save_checkpoint(tmp_path / "a", model, tokenizer, head=tensors, task=task)
    stored, meta = parts(run)
    stored.update(tensors or {})
    if task is not None:
        meta["task"] = json.dumps(task)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(write_checkpoint(tmp_path / "b.safetensors", stored, meta))
