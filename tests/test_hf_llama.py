"""Hugging Face Llama folders (minillm/formats/hf_llama.py, through formats/hf.py): config.json
and tensor names both ways, clear errors, and Transformers' LlamaForCausalLM as the reference
(logits, loss, every gradient through torch autograd, greedy generation with the cache, folders
loading both ways), skipped cleanly when torch or transformers is absent; never the network.

A float64 LlamaForCausalLM is not float64 throughout: LlamaRMSNorm casts its input to float32,
the rotary embedding computes its angles and cos/sin in float32 (and its ``labels=`` loss casts
the logits to float32), so the stock model agrees with a float64 computation to ~1e-7 only.
The ``float64_llama`` fixture patches those two forwards to float64 for the 1e-12 comparisons.
"""
import json
import os

import numpy as np
import pytest

from minillm import GPT, BPETokenizer, GPTConfig, generate, load_pretrained
from minillm.formats.hf_llama import (config_from_llama, config_to_llama, llama_shapes,
                                      params_from_llama, params_to_llama)
from minillm.formats.safetensors import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
V = 300
EOT = "<|endoftext|>"
TEXT = "hello world, the quick brown fox jumps over the lazy dog. héllo wörld 日本語 naïve café "
IDX = np.array([[5, 17, 250, 3, 99, 299, 0, 42], [1, 2, 3, 4, 5, 6, 7, 8]])
VARIANTS = {"untied": {}, "tied+bias": dict(tie_embeddings=True, bias=True),
            "mqa": dict(n_kv_head=1)}


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT * 10, V, special_tokens=[EOT])


def llama_model(dtype="float64", seed=0, **kw):
    """A tiny Llama-style GPT whose every parameter is random (so a swapped tensor shows)."""
    cfg = GPTConfig.llama(**{"vocab_size": V, "block_size": 32, "n_layer": 2, "n_head": 4,
                             "n_embd": 16, "rope_theta": 500000.0, "norm_eps": 1e-6,
                             "dtype": dtype, **kw})
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():
        p += rng.normal(0.0, 0.3, size=p.shape).astype(p.dtype)
    return model


# -- without Transformers ------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_load_round_trip(tmp_path, tokenizer, variant):
    model = llama_model("float32", **VARIANTS[variant])
    model.save_pretrained(tmp_path, tokenizer)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "merges.txt", "model.safetensors", "tokenizer_config.json",
                     "vocab.json"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == model.config.kv_heads
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 500000.0}
    tensors = load_file(tmp_path / "model.safetensors")
    assert set(tensors) == set(llama_shapes(model.config))
    assert ("lm_head.weight" in tensors) == (variant != "tied+bias")
    loaded, tok = load_pretrained(tmp_path)
    assert loaded.config == model.config
    for name, p in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)
    assert tok.encode(TEXT + EOT) == tokenizer.encode(TEXT + EOT)


def test_the_name_mapping(tokenizer):
    """q/k/v and gate/up are column blocks of c_attn and c_fc, each transposed; o and down are
    c_proj transposed."""
    model = llama_model(n_kv_head=1)
    p, t = model.params, params_to_llama(model.params, model.config)
    C, hs = 16, 4
    layer = "model.layers.1."
    np.testing.assert_array_equal(t[layer + "self_attn.q_proj.weight"],
                                  p["h.1.attn.c_attn.weight"][:, :C].T.astype(np.float32))
    np.testing.assert_array_equal(t[layer + "self_attn.k_proj.weight"],
                                  p["h.1.attn.c_attn.weight"][:, C:C + hs].T.astype(np.float32))
    np.testing.assert_array_equal(t[layer + "self_attn.v_proj.weight"],
                                  p["h.1.attn.c_attn.weight"][:, C + hs:].T.astype(np.float32))
    I = model.config.inner_size
    np.testing.assert_array_equal(t[layer + "mlp.up_proj.weight"],
                                  p["h.1.mlp.c_fc.weight"][:, I:].T.astype(np.float32))
    np.testing.assert_array_equal(t[layer + "mlp.down_proj.weight"],
                                  p["h.1.mlp.c_proj.weight"].T.astype(np.float32))
    np.testing.assert_array_equal(t["model.norm.weight"], p["ln_f.weight"].astype(np.float32))
    back = params_from_llama(t, model.config)
    assert list(back) == list(p)


def test_config_keys_defaults_and_the_older_rope_theta():
    cfg = config_from_llama({"model_type": "llama", "vocab_size": 50, "hidden_size": 16,
                             "intermediate_size": 40, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "rope_theta": 1e6,
                             "rope_scaling": None})
    assert (cfg.kv_heads, cfg.rope_theta, cfg.norm_eps, cfg.block_size) == (4, 1e6, 1e-6, 2048)
    assert cfg.n_kv_head == 0 and cfg.intermediate_size == 40 and not cfg.tie_embeddings
    assert config_from_llama(config_to_llama(cfg)) == cfg
    default = GPTConfig.llama(vocab_size=50, n_embd=16, n_head=4)
    assert config_from_llama(config_to_llama(default), path="x") == \
        GPTConfig(**{**default.to_dict(), "block_size": 64})


@pytest.mark.parametrize("overrides, message", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_type is 'llama3'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type is 'linear'"),
    ({"hidden_act": "gelu"}, "hidden_act is 'gelu'"),
    ({"head_dim": 8}, "head_dim is 8"),
    ({"attention_bias": True}, "attention_bias and mlp_bias differ"),
    ({"num_key_value_heads": 3}, "must divide n_head"),
    ({"hidden_size": None}, "n_embd must be an integer >= 1"),
])
def test_unsupported_config_is_a_clear_error(tmp_path, overrides, message):
    model = llama_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **overrides}))
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained(tmp_path)
    assert "config.json" in str(err.value)


def test_bad_tensors_are_named_as_the_file_names_them(tmp_path):
    model = llama_model(bias=True)
    tensors = params_to_llama(model.params, model.config)
    folder = tmp_path / "a"
    model.save_pretrained(folder)
    del tensors["model.layers.1.mlp.up_proj.bias"]
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(2, np.float32)  # skipped
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing 1 tensor.*model\.layers\.1\.mlp\.up_proj\.bias"):
        load_pretrained(folder)
    tensors["model.layers.1.mlp.up_proj.bias"] = np.ones(model.config.inner_size, np.float32)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.ones((16, 8), np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(16, 8\), expected \(8, 16\)"):
        load_pretrained(folder)
    tied = llama_model(tie_embeddings=True)
    tied.save_pretrained(tmp_path / "b")
    tensors = params_to_llama(tied.params, tied.config)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + np.float32(1.0)
    save_file(tensors, tmp_path / "b" / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        load_pretrained(tmp_path / "b")


def test_a_mixed_block_is_neither_gpt2_nor_llama(tmp_path):
    mixed = GPT(GPTConfig(vocab_size=20, n_layer=1, n_embd=8, n_head=2, pos_encoding="rope"))
    with pytest.raises(ValueError, match="neither as GPT-2 .*'rope' positions.* nor as Llama "
                                         ".*norm is 'layernorm'"):
        mixed.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- against Transformers --------------------------------------------------------------------------

@pytest.fixture
def transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.fixture
def float64_llama(transformers, monkeypatch):
    """Patch LlamaRMSNorm and the rotary embedding to compute in float64 (see the docstring)."""
    import torch
    from transformers.models.llama import modeling_llama

    def rmsnorm(self, hidden_states):
        variance = (hidden_states * hidden_states).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    def rotary(self, x, position_ids):
        dim, theta = self.config.head_dim, self.config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rmsnorm)
    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", rotary)
    return torch


def hf_llama(transformers, tmp_path, seed=0, **kw):
    """A tiny random float64 LlamaForCausalLM saved with save_pretrained, and minillm's float64
    model read from that folder."""
    import torch
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 100.0},
        bos_token_id=None, eos_token_id=None, **kw)
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():                                  # away from the 0/1 initialisation
        for p in hf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path, dtype="float64")
    return hf, model


HF_VARIANTS = {"untied": {}, "tied+bias": dict(tie_word_embeddings=True, attention_bias=True,
                                                 mlp_bias=True)}


@pytest.mark.parametrize("variant", HF_VARIANTS)
def test_logits_loss_and_every_gradient_match_transformers(float64_llama, transformers, tmp_path,
                                                           variant):
    torch = float64_llama
    hf, model = hf_llama(transformers, tmp_path, **HF_VARIANTS[variant])
    assert model.config.tie_embeddings == (variant != "untied")
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, V, size=(3, 12)), rng.integers(0, V, size=(3, 12))
    targets[1, :4] = -1
    logits = model.forward(idx)
    loss, grads = model.loss_and_grads(idx, targets)
    t_logits = hf(torch.from_numpy(idx)).logits
    t_loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, V),
                                               torch.from_numpy(targets).reshape(-1),
                                               ignore_index=-1)
    t_loss.backward()
    ref = t_logits.detach().numpy()
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-12       # measured ~1e-15
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    hf_grads = params_from_llama({n: p.grad.numpy() for n, p in hf.named_parameters()},
                                 model.config)                      # the same mapping as weights
    assert set(hf_grads) == set(grads)
    for name, g in grads.items():
        err = np.abs(g - hf_grads[name]).max() / np.abs(hf_grads[name]).max()
        assert err < 1e-12, f"{name}: {err:.1e}"                    # measured ~1e-15


def test_stock_float64_transformers_is_float32_inside(transformers, tmp_path):
    import torch
    hf, model = hf_llama(transformers, tmp_path)
    with torch.no_grad():
        ref = hf(torch.from_numpy(IDX)).logits.numpy()
    err = np.abs(model.forward(IDX) - ref).max() / np.abs(ref).max()
    assert 1e-12 < err < 1e-5                         # its RMSNorm and RoPE run in float32


def test_greedy_generation_with_the_cache_matches_transformers(float64_llama, transformers,
                                                                tmp_path):
    torch = float64_llama
    hf, model = hf_llama(transformers, tmp_path, seed=3)
    prompt = [3, 1, 4, 1, 5]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                          max_new_tokens=20, do_sample=False, pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    assert len(expected) == 20 and len(set(expected)) > 1
    assert list(generate(model, prompt, 20, greedy=True)) == expected
    assert list(generate(model, prompt, 20, greedy=True, use_cache=False)) == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_minillm_folder_loads_in_transformers(float64_llama, transformers, tmp_path, tokenizer,
                                              variant):
    torch = float64_llama
    model = llama_model(**VARIANTS[variant])
    model.save_pretrained(tmp_path, tokenizer)
    hf, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info                  # nothing missing or unexpected
    assert next(hf.parameters()).dtype == torch.float32
    assert hf.config.num_key_value_heads == model.config.kv_heads
    assert hf.config.rope_parameters["rope_theta"] == 500000.0 and hf.config.head_dim == 4
    if model.config.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    saved, _ = load_pretrained(tmp_path, dtype="float64")   # the float32 weights, in float64
    hf64 = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    with torch.no_grad():
        ref64 = hf64(torch.from_numpy(IDX)).logits.numpy()
        ref32 = hf(torch.from_numpy(IDX)).logits.numpy()
    assert np.abs(saved.forward(IDX) - ref64).max() / np.abs(ref64).max() < 1e-12
    assert np.abs(model.forward(IDX) - ref32).max() / np.abs(ref32).max() < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "the lazy fox, naïve café 日本" + EOT + " hello"
    assert hf_tok.encode(text) == tokenizer.encode(text)
