"""Hugging Face GPT-2 folders (minillm/formats/hf.py): config.json, model.safetensors and the
tokenizer files, read and written, and checked against Transformers where it is installed."""
import json
from pathlib import Path

import numpy as np
import pytest

from minillm import GPT, BPETokenizer, CharTokenizer, GPTConfig, generate, load_pretrained
from minillm.formats.hf import config_from_gpt2, read_tokenizer
from minillm.formats.safetensors import load_file, read_header, save_file

EOT = "<|endoftext|>"
TEXT = "hello world, the quick brown fox jumps over the lazy dog. héllo wörld 日本語 naïve café "


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny byte-level BPE with GPT-2's pattern and <|endoftext|> as its last id."""
    return BPETokenizer.train(TEXT * 10, 300, special_tokens=[EOT])


def tiny_config(dtype="float32", **kw):
    return GPTConfig(**{"vocab_size": 300, "block_size": 32, "n_layer": 2, "n_head": 2,
                        "n_embd": 16, "dtype": dtype, **kw})


def random_model(dtype="float32", seed=0, **kw):
    """A GPT whose every parameter (biases and LayerNorm too) is random, so a swapped or
    skipped tensor changes the logits."""
    cfg = tiny_config(dtype, **kw)
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        p += rng.normal(0.0, 0.1, size=p.shape).astype(p.dtype)
    return model


def hf_config(cfg, **overrides):
    """A GPT-2 config.json as Transformers writes it (written by hand, independent of the code
    under test)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function":
            "gelu_new", "layer_norm_epsilon": 1e-05, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
            "n_layer": cfg.n_layer, "n_positions": cfg.block_size, "n_inner": None,
            "vocab_size": cfg.vocab_size, "resid_pdrop": 0.1, "tie_word_embeddings": True,
            **overrides}


def write_checkpoint(folder, model, prefix="", extra=None, drop=(), config=None, dtypes=None):
    """Write a GPT-2 folder with minillm's safetensors writer."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {prefix + k: v for k, v in model.params.items() if k not in drop}
    tensors.update(extra or {})
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"},
              dtypes={prefix + k: dtypes for k in model.params if k not in drop} if dtypes else None)
    (folder / "config.json").write_text(json.dumps(config or hf_config(model.config)))
    return folder


IDX = np.array([[5, 17, 250, 3, 99, 299, 0, 42], [1, 2, 3, 4, 5, 6, 7, 8]])


# -- loading ---------------------------------------------------------------------------------------

def test_load_gives_the_same_model_as_the_arrays(tmp_path):
    model = random_model()
    loaded, tok = load_pretrained(write_checkpoint(tmp_path / "ckpt", model))
    assert tok is None                                    # no vocab.json / merges.txt
    assert loaded.config == tiny_config(dropout=0.1)      # dropout from resid_pdrop
    assert list(loaded.params) == list(model.params)
    for name, p in model.params.items():
        assert loaded.params[name].dtype == np.float32, name
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)
    np.testing.assert_array_equal(loaded.forward(IDX), model.forward(IDX))


def test_prefix_mask_buffers_and_tied_lm_head_are_accepted(tmp_path):
    model = random_model(seed=3)
    T = model.config.block_size
    mask = np.tril(np.ones((T, T), dtype=bool))[None, None]
    extra = {"transformer.h.0.attn.bias": mask, "transformer.h.1.attn.bias": mask,
             "transformer.h.0.attn.masked_bias": np.array(-1e4, dtype=np.float32),
             "lm_head.weight": model.params["wte.weight"].copy()}
    loaded, _ = load_pretrained(write_checkpoint(tmp_path, model, "transformer.", extra))
    assert set(loaded.params) == set(model.params)
    np.testing.assert_array_equal(loaded.forward(IDX), model.forward(IDX))


def test_float64_load_and_half_precision_checkpoints(tmp_path):
    model = random_model(seed=4)
    write_checkpoint(tmp_path / "f32", model)
    loaded, _ = load_pretrained(tmp_path / "f32", dtype="float64")
    assert loaded.config.dtype == "float64"
    assert all(p.dtype == np.float64 for p in loaded.params.values())
    np.testing.assert_array_equal(loaded.params["h.1.mlp.c_fc.weight"],
                                  model.params["h.1.mlp.c_fc.weight"].astype(np.float64))
    for kind in ("F16", "BF16"):
        folder = write_checkpoint(tmp_path / kind, model, dtypes=kind)
        assert read_header(folder / "model.safetensors")["wte.weight"]["dtype"] == kind
        stored = load_file(folder / "model.safetensors")       # the rounded values, as float
        half, _ = load_pretrained(folder)
        for name, p in half.params.items():
            assert p.dtype == np.float32
            np.testing.assert_array_equal(p, stored[name].astype(np.float32), err_msg=name)
        np.testing.assert_allclose(half.params["wte.weight"], model.params["wte.weight"],
                                   rtol=1e-2, atol=1e-3)
        assert np.abs(half.forward(IDX) - model.forward(IDX)).max() < 0.1


def test_sharded_checkpoint_loads(tmp_path):
    model = random_model(seed=5)
    names = list(model.params)
    shards = {"model-00001-of-00002.safetensors": names[:9],
              "model-00002-of-00002.safetensors": names[9:]}
    for file, part in shards.items():
        save_file({n: model.params[n] for n in part}, tmp_path / file)
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(hf_config(model.config)))
    loaded, _ = load_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.forward(IDX), model.forward(IDX))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_pretrained(tmp_path)


# -- bad checkpoints -------------------------------------------------------------------------------

def test_missing_tensor_is_named(tmp_path):
    folder = write_checkpoint(tmp_path, random_model(), drop=("h.1.mlp.c_fc.bias",))
    with pytest.raises(ValueError, match=r"missing 1 tensor.*h\.1\.mlp\.c_fc\.bias \(64,\)"):
        load_pretrained(folder)


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    model = random_model()
    extra = {"h.0.attn.c_attn.weight": np.zeros((48, 16), np.float32)}   # transposed
    folder = write_checkpoint(tmp_path, model, extra=extra)
    with pytest.raises(ValueError, match=r"'h\.0\.attn\.c_attn\.weight' has shape \(48, 16\), "
                                         r"expected \(16, 48\)"):
        load_pretrained(folder)


def test_config_and_weights_that_disagree(tmp_path):
    model = random_model()
    folder = write_checkpoint(tmp_path, model, config=hf_config(model.config, n_layer=3))
    with pytest.raises(ValueError, match=r"missing 12 tensor.*h\.2\.ln_1\.weight"):
        load_pretrained(folder)
    folder = write_checkpoint(tmp_path, model, config=hf_config(model.config, vocab_size=301))
    with pytest.raises(ValueError, match=r"'wte\.weight' has shape \(300, 16\), expected \(301, 16\)"):
        load_pretrained(folder)


def test_unknown_tensors_are_listed(tmp_path):
    extra = {"h.0.attn.q_norm.weight": np.ones(16, np.float32), "score.weight": np.ones(2, np.float32)}
    folder = write_checkpoint(tmp_path, random_model(), extra=extra)
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\).*h\.0\.attn\.q_norm\.weight, score\.weight"):
        load_pretrained(folder)


def test_untied_lm_head_is_refused(tmp_path):
    model = random_model()
    extra = {"lm_head.weight": model.params["wte.weight"] + np.float32(1.0)}
    folder = write_checkpoint(tmp_path, model, extra=extra)
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_pretrained(folder)


@pytest.mark.parametrize("overrides, message", [
    ({"activation_function": "relu"}, "activation_function is 'relu'"),
    ({"activation_function": "gelu"}, "activation_function is 'gelu'"),      # the exact erf GELU
    ({"layer_norm_epsilon": 0.0}, r"norm_eps must be a number in \(0, 1\)"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings is false"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx is true"),
    ({"n_inner": -32}, "intermediate_size must be an integer >= 0"),
    ({"model_type": "bert"}, "model_type is 'bert'; minillm reads GPT-2 and Llama"),
    ({"n_head": 3}, "divisible by n_head"),
    ({"n_embd": None}, "n_embd must be an integer >= 1"),
    ({"n_layer": "2"}, "n_layer must be an integer >= 1, got '2'"),
    ({"n_head": True}, "n_head must be an integer >= 1, got True"),
    ({"resid_pdrop": "x"}, "resid_pdrop must be a number, got 'x'"),
    ({"resid_pdrop": 1.5}, r"dropout must be a number in \[0, 1\), got 1.5"),
    ({"layer_norm_epsilon": "1e-05"}, "layer_norm_epsilon must be a number, got '1e-05'"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
])
def test_unsupported_config_is_a_clear_error(tmp_path, overrides, message):
    model = random_model()
    folder = write_checkpoint(tmp_path, model, config=hf_config(model.config, **overrides))
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained(folder)
    assert "config.json" in str(err.value)


def test_config_missing_keys_and_gelu_pytorch_tanh():
    with pytest.raises(ValueError, match="missing n_layer, n_embd"):
        config_from_gpt2({"vocab_size": 5, "n_positions": 8, "n_head": 1})
    cfg = config_from_gpt2({"vocab_size": 5, "n_ctx": 8, "n_layer": 1, "n_head": 1, "n_embd": 4,
                            "activation_function": "gelu_pytorch_tanh"}, dtype="float64")
    assert (cfg.block_size, cfg.dtype, cfg.dropout) == (8, "float64", 0.0)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_pretrained(tmp_path / "nowhere")
    folder = write_checkpoint(tmp_path / "a", random_model())
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(folder)
    folder = write_checkpoint(tmp_path / "b", random_model())
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*safetensors only"):
        load_pretrained(folder)
    with pytest.raises(ValueError, match="dtype"):
        load_pretrained(folder, dtype="float16")


def test_half_a_tokenizer_is_an_error(tmp_path, tokenizer):
    folder = write_checkpoint(tmp_path, random_model())
    tokenizer.to_gpt2(folder)
    (folder / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_pretrained(folder)


def test_tokenizer_larger_than_the_model_is_refused(tmp_path, tokenizer):
    model = GPT(tiny_config(vocab_size=200))
    folder = write_checkpoint(tmp_path, model)
    tokenizer.to_gpt2(folder)
    with pytest.raises(ValueError, match="ids up to 299.*vocab_size 200"):
        load_pretrained(folder)


# -- saving ----------------------------------------------------------------------------------------

def test_save_load_round_trip_is_exact(tmp_path, tokenizer):
    model = random_model(seed=7)
    folder = tmp_path / "new" / "gpt2"                      # parents are created
    model.save_pretrained(folder, tokenizer)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "merges.txt", "model.safetensors", "vocab.json"]   # no temporary files
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["bos_token_id"] == config["eos_token_id"] == tokenizer.eot_token == 299
    assert config["tie_word_embeddings"] is True
    header = read_header(folder / "model.safetensors")
    assert {e["dtype"] for e in header.values()} == {"F32"}
    assert "transformer.h.1.attn.c_proj.weight" in header
    loaded, tok = load_pretrained(folder)
    assert loaded.config == model.config
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)
    np.testing.assert_array_equal(loaded.forward(IDX), model.forward(IDX))
    assert tok.encode(TEXT + EOT) == tokenizer.encode(TEXT + EOT)
    loaded.save_pretrained(folder, tok)                     # overwriting in place works
    assert load_file(folder / "model.safetensors").keys() == header.keys()


def test_save_float64_model_writes_float32(tmp_path):
    model = random_model("float64", seed=8)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["bos_token_id"] is None                   # no tokenizer, no <|endoftext|>
    loaded, _ = load_pretrained(tmp_path, dtype="float64")
    np.testing.assert_array_equal(loaded.params["wpe.weight"],
                                  model.params["wpe.weight"].astype(np.float32))


def test_save_refuses_what_gpt2_cannot_hold(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="'sinusoidal' positions.*wpe.weight"):
        GPT(tiny_config(pos_encoding="sinusoidal")).save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="only a BPETokenizer.*CharTokenizer"):
        random_model().save_pretrained(tmp_path / "b", CharTokenizer.from_text("abc"))
    with pytest.raises(ValueError, match="pre-tokenization pattern"):
        random_model().save_pretrained(tmp_path / "c", BPETokenizer(pattern=None))
    with pytest.raises(ValueError, match="300 ids but the model only 200"):
        GPT(tiny_config(vocab_size=200)).save_pretrained(tmp_path / "d", tokenizer)
    broken = random_model()
    broken.params["h.0.ln_2.bias"] = np.zeros(17, np.float32)
    with pytest.raises(ValueError, match=r"'h\.0\.ln_2\.bias' has shape \(17,\), expected \(16,\)"):
        broken.save_pretrained(tmp_path / "e")
    assert not any((tmp_path / d).exists() for d in "abcde")  # checked before writing


def test_gpt_from_pretrained_and_save_pretrained(tmp_path):
    model = random_model(seed=9)
    model.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.forward(IDX), model.forward(IDX))
    assert loaded.tokenizer is None                           # no vocab.json/merges.txt saved


# -- against Hugging Face Transformers -------------------------------------------------------------

def _hf_model(tmp_path):
    """A tiny random float64 GPT2LMHeadModel saved with save_pretrained."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=300, n_positions=32,
                                     bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(config).double().eval()
    with torch.no_grad():                                   # make biases and LayerNorms non-trivial
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    return torch, hf


def test_transformers_checkpoint_loads_with_equal_logits(tmp_path):
    torch, hf = _hf_model(tmp_path)
    model, _ = load_pretrained(tmp_path, dtype="float64")
    with torch.no_grad():
        ref = hf(torch.tensor(IDX)).logits.numpy()
    np.testing.assert_allclose(model.forward(IDX), ref, rtol=0, atol=1e-5)
    assert np.abs(model.forward(IDX) - ref).max() < 1e-10   # float64 on both sides


def test_greedy_continuation_matches_transformers(tmp_path):
    torch, hf = _hf_model(tmp_path)
    model, _ = load_pretrained(tmp_path, dtype="float64")
    prompt = [5, 17, 250, 3, 99]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                          do_sample=False, max_new_tokens=20, pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    assert len(expected) == 20
    assert list(generate(model, prompt, 20, greedy=True)) == expected
    assert list(generate(model, prompt, 20, greedy=True, use_cache=False)) == expected


def test_minillm_folder_loads_in_transformers(tmp_path, tokenizer):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = random_model(seed=11)
    model.save_pretrained(tmp_path, tokenizer)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.config.n_positions == 32 and hf.config.eos_token_id == 299
    with torch.no_grad():
        ref = hf(torch.tensor(IDX)).logits.numpy()
    assert ref.dtype == np.float32
    np.testing.assert_allclose(model.forward(IDX), ref, rtol=0, atol=1e-4)


def test_tokenizer_folder_round_trip_with_transformers(tmp_path, tokenizer):
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    random_model().save_pretrained(tmp_path / "ours", tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    text = "the lazy fox, naïve café 日本" + EOT + " hello"
    assert hf_tok.encode(text) == tokenizer.encode(text)
    hf_tok.save_pretrained(tmp_path / "theirs")            # Transformers 5 writes tokenizer.json
    back = read_tokenizer(tmp_path / "theirs")
    assert back.encode(text) == tokenizer.encode(text)
    assert back.special_tokens == {EOT: 299}


def test_cli_sample_pretrained_streams_the_greedy_continuation(tmp_path, tokenizer, capsys):
    from minillm.cli import main
    from minillm.core.sampling import generate
    model = random_model(seed=4)
    model.save_pretrained(tmp_path, tokenizer)
    prompt = "The quick brown fox"
    assert main(["sample", "--pretrained", str(tmp_path), "--prompt", prompt,
                 "--max-new-tokens", "12", "--greedy"]) == 0
    expected = tokenizer.decode(list(generate(model, tokenizer.encode(prompt), 12, greedy=True)))
    assert capsys.readouterr().out == prompt + expected + "\n"
    assert main(["sample", "--pretrained", str(tmp_path / "nowhere"), "--prompt", "x"]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["sample", "--prompt", "x"]) == 1
    assert "exactly one of --ckpt" in capsys.readouterr().err


# -- the GPT-2-layout model that ships with the notebooks ------------------------------------------

SHIPPED = Path(__file__).resolve().parents[1] / "notebooks" / "models" / "shakespeare-bpe"


def test_shipped_shakespeare_bpe_folder_loads_and_writes_shakespeare():
    model, tok = load_pretrained(SHIPPED)
    assert tok.vocab_size == model.config.vocab_size == 1024
    ids = tok.encode("ROMEO:\nWhat light through yonder window breaks?")
    logits = model.forward(np.array([ids]))
    assert np.isfinite(logits).all()
    targets = np.array([ids[1:]])
    assert model.loss(np.array([ids[:-1]]), targets) < 5.0           # ln 1024 = 6.93 untrained
    text = tok.decode(list(generate(model, tok.encode("\n"), 40, greedy=True)))
    assert any(word in text for word in (" the ", " and ", " I ", " you "))


def test_shipped_shakespeare_bpe_folder_in_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, tok = load_pretrained(SHIPPED)
    hf = transformers.GPT2LMHeadModel.from_pretrained(SHIPPED).eval()
    ids = np.array([tok.encode("ROMEO:\nWhat light through yonder window breaks?")])
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(model.forward(ids), ref, rtol=0, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(SHIPPED)
    text = "But, soft! what light through yonder window breaks?\n"
    assert hf_tok.encode(text) == tok.encode(text)
