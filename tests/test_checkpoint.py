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


def test_checkpoint_that_does_not_match_the_model(run, tmp_path):
    _, model, tokenizer = run
    del model.params["ln_f.bias"]
    save_checkpoint(tmp_path / "bad", model, tokenizer)
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): ln_f\.bias"):
        load_checkpoint(tmp_path / "bad")
    model.params["ln_f.bias"] = np.zeros(5, dtype=np.float32)
    save_checkpoint(tmp_path / "bad", model, tokenizer)
    with pytest.raises(ValueError, match=r"'ln_f.bias' has shape \(5,\), expected \(16,\)"):
        load_checkpoint(tmp_path / "bad")



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
    safetensors.save_file(tensors, path, metadata={**meta, "model_config": json.dumps(old)})
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
