"""The command line (minillm/cli.py): options built from the configs, each default shown once,
choices checked by the parser, --version, and the export command."""
import re
import subprocess
import sys

import numpy as np
import pytest

from minillm import GPT, BPETokenizer, CharTokenizer, GPTConfig, __version__, load_pretrained
from minillm.cli import build_parser, main
from minillm.formats.checkpoint import load_model, save_checkpoint


@pytest.mark.parametrize("command", ["train", "sample", "finetune", "export", "grade"])
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
    (["train", "--max-iters", "ten"], "argument --max-iters: must be an integer >= 1, got 'ten'"),
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


def test_the_llama_preset_then_the_explicit_options():
    from minillm.cli import model_config_from_args
    parse = build_parser().parse_args
    assert model_config_from_args(parse(["train"])) == GPTConfig()
    llama = model_config_from_args(parse(["train", "--preset", "llama"]))
    assert llama == GPTConfig.llama()
    mixed = model_config_from_args(parse(["train", "--preset", "llama", "--n-head", "8",
                                          "--mlp", "gelu", "--tie-embeddings"]))
    assert mixed == GPTConfig.llama(n_head=8, mlp="gelu", tie_embeddings=True)
    assert mixed.kv_heads == 4                                     # the preset's n_head / 2
    explicit = model_config_from_args(parse(["train", "--norm", "rmsnorm", "--pos-encoding",
                                             "rope", "--n-kv-head", "1", "--no-bias"]))
    assert (explicit.norm, explicit.pos_encoding, explicit.kv_heads, explicit.bias,
            explicit.mlp) == ("rmsnorm", "rope", 1, False, "gelu")


def test_train_sample_export_and_finetune_a_llama_style_model(tmp_path, capsys):
    text = ("the quick brown fox jumps over the lazy dog. " * 8
            + "pack my box with five dozen liquor jugs! " * 8) * 6
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    tiny = ["--n-layer", "2", "--n-head", "4", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "4", "--eval-iters", "2", "--eval-interval", "5",
            "--log-interval", "5", "--sample-tokens", "20"]
    run = tmp_path / "run"
    assert main(["train", "--preset", "llama", "--data", str(corpus), "--out-dir", str(run),
                 "--max-iters", "6", "--tokenizer", "bpe", "--bpe-vocab-size", "280",
                 *tiny]) == 0
    out = capsys.readouterr().out
    assert "block: rmsnorm, rope positions, swiglu MLP of 48, 2 key/value heads" in out
    model, tokenizer, kind = load_model(run)
    assert kind == "minillm" and model.config == GPTConfig.llama(
        vocab_size=280, n_layer=2, n_head=4, n_embd=16, block_size=16)
    for rolling in ([], ["--rolling-cache"]):                      # 40 tokens: past the window
        assert main(["sample", "--ckpt", str(run), "--prompt", "the", "--max-new-tokens", "40",
                     "--greedy", *rolling]) == 0
    exact, rolled = capsys.readouterr().out.split("\n")[:2]
    assert exact[:19] == rolled[:19] and len(tokenizer.encode(rolled)) > 30
    hf = tmp_path / "hf"
    assert main(["export", "--ckpt", str(run), "--out-dir", str(hf)]) == 0
    assert "a Llama folder" in capsys.readouterr().out
    loaded, tok, kind = load_model(hf)
    assert kind == "llama" and loaded.config == model.config
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(loaded.forward(idx), model.forward(idx))
    lora = tmp_path / "lora"
    assert main(["finetune", "--init-from", str(hf), "--data", str(corpus), "--out-dir",
                 str(lora), "--max-iters", "3", "--batch-size", "2", "--eval-iters", "1",
                 "--lora-rank", "2", "--lora-targets",
                 "attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj", "--sample-tokens", "0"]) == 0
    tuned, _, _ = load_model(lora)
    assert tuned.config == model.config
    assert not np.array_equal(tuned.params["h.1.mlp.c_fc.weight"], model.params["h.1.mlp.c_fc.weight"])
