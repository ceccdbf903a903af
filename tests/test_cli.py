"""The command line (minillm/cli.py): options built from the configs, each default shown once,
choices checked by the parser, --version, and the export command."""
import re
import subprocess
import sys

import numpy as np
import pytest

from minillm import GPT, BPETokenizer, CharTokenizer, GPTConfig, __version__, load_pretrained
from minillm.cli import build_parser, main
from minillm.formats.checkpoint import save_checkpoint


@pytest.mark.parametrize("command", ["train", "sample", "finetune", "export"])
def test_help_shows_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.count("--") > 3
    assert not re.search(r"\(default: [^)]*\)\s*\(default:", text)


def test_train_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "{learned,sinusoidal,rope}" in text and "{float32,float64}" in text
    assert "{char,bpe}" in text and "{layernorm,rmsnorm}" in text and "{gelu,swiglu}" in text
    assert "{gpt2,llama}" in text and "--n-kv-head" in text and "--no-tie-embeddings" in text


@pytest.mark.parametrize("args, message", [
    (["train", "--pos-encoding", "bogus"], "invalid choice: 'bogus'"),
    (["train", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["train", "--tokenizer", "words"], "invalid choice: 'words'"),
    (["train", "--max-iters", "ten"], "invalid int value: 'ten'"),
])
def test_the_parser_refuses_bad_values(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_version():
    out = subprocess.run([sys.executable, "-m", "minillm", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"minillm {__version__}"


def test_export_writes_a_folder_that_loads_back(tmp_path, capsys):
    tokenizer = BPETokenizer.train("the quick brown fox jumps over the lazy dog " * 20, 280,
                                   special_tokens=["<|endoftext|>"])
    model = GPT(GPTConfig(vocab_size=280, block_size=16, n_layer=1, n_head=2, n_embd=8))
    save_checkpoint(tmp_path / "run", model, tokenizer)
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--out-dir", str(tmp_path / "hf")]) == 0
    loaded, tok = load_pretrained(tmp_path / "hf")
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(loaded.forward(idx), model.forward(idx))
    assert tok.encode("the fox") == tokenizer.encode("the fox")
    save_checkpoint(tmp_path / "char", model, CharTokenizer.from_text("abc"))
    capsys.readouterr()
    assert main(["export", "--ckpt", str(tmp_path / "char"), "--out-dir", str(tmp_path / "x")]) == 1
    assert "needs a byte-level BPE tokenizer" in capsys.readouterr().err
