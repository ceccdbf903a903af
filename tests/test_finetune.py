"""Fine-tuning: a new folder, the original untouched, lower loss on the new text; vocabulary
errors and --extend-vocab; LoRA (frozen base, adapters file, merged checkpoint); GPT-2 folders;
command-line errors."""
import numpy as np
import pytest

from minillm.formats.checkpoint import load_checkpoint
from minillm.cli import main
from minillm.training.data import get_batch
from minillm.training.finetune import ADAPTERS, FinetuneConfig, add_token_rows, finetune
from minillm.core.lora import LoRA
from minillm.core.config import GPTConfig
from minillm.core.optim import OptimConfig
from minillm.training.train import TrainConfig, encode_splits, train

OLD = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
       "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 40
# another style, written with the characters of OLD only
NEW = ("All resolved: speak the word, hear the word, proceed.\nYou are the word, speak it.\n") * 60


def silent(*_):
    pass


class NoProgress:
    def update(self, *a):
        pass

    def message(self, *a):
        pass


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny character model trained for a few iterations on OLD: (folder, OLD file, NEW file)."""
    root = tmp_path_factory.mktemp("ft")
    old, new = write(root / "old.txt", OLD), write(root / "new.txt", NEW)
    train_config = TrainConfig(data=old, out_dir=str(root / "base"), max_iters=20, batch_size=8,
                     eval_interval=20, eval_iters=2, sample_tokens=0)
    model_config = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16)
    train(train_config, model_config, OptimConfig(learning_rate=3e-3, warmup_iters=2, lr_decay_iters=20), log=silent)
    return root / "base", old, new


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def config(base, out, **kw):
    folder, _, new = base
    values = dict(init_from=str(folder), data=new, out_dir=str(out), max_iters=30, batch_size=8,
                  learning_rate=3e-3, min_lr=3e-4, warmup_iters=3, eval_interval=10,
                  eval_iters=2, sample_tokens=0)
    return FinetuneConfig(**{**values, **kw})


def run(config, lines=None):
    log = silent if lines is None else lines.append
    return finetune(config, log=log, progress=NoProgress())


def fixed_batches(tokenizer, text, block_size, n=4):
    val = encode_splits(text, tokenizer)["val"]
    rng = np.random.default_rng(0)
    return [get_batch(val, block_size, 8, rng) for _ in range(n)]


def mean_loss(model, batches):
    return float(np.mean([model.loss(x, y) for x, y in batches]))


def test_full_finetune_lowers_the_new_loss_and_never_touches_the_original(base, tmp_path):
    folder, old, _ = base
    before = snapshot(folder)
    result = run(config(base, tmp_path / "ft", watch_data=old))
    assert snapshot(folder) == before                          # every byte of the original
    ckpt = load_checkpoint(tmp_path / "ft")
    assert (tmp_path / "ft" / "tokenizer.json").is_file()
    assert ckpt.tokenizer == load_checkpoint(folder).tokenizer
    batches = fixed_batches(ckpt.tokenizer, NEW, 16)
    base_loss, new_loss = mean_loss(load_checkpoint(folder).model, batches), mean_loss(ckpt.model, batches)
    assert new_loss < base_loss - 0.1, (base_loss, new_loss)
    assert all(p.dtype == np.float32 for p in ckpt.model.params.values())
    hist = result.state["history"]
    assert len(hist["train"]) == 30 and [e[0] for e in hist["eval"]] == [0, 10, 20, 30]
    assert [e[0] for e in hist["eval_extra"]["watch"]] == [0, 10, 20, 30]    # the old text too
    assert result.trainable == result.total == ckpt.model.num_params()
    for k, v in load_checkpoint(folder).model.params.items():     # the in-memory base as well
        np.testing.assert_array_equal(result.base.params[k], v)


def test_missing_characters_are_listed(base, tmp_path):
    data = write(tmp_path / "accents.txt", NEW + "Straße, café: 5 €\n")
    with pytest.raises(ValueError) as err:
        run(config(base, tmp_path / "ft", data=data))
    message = str(err.value)
    assert "4 characters the model's vocabulary lacks: '5', 'ß', 'é', '€'" in message
    assert "--extend-vocab" in message
    assert not (tmp_path / "ft").exists()


def test_extend_vocab_keeps_old_ids_and_rows_and_trains(base, tmp_path):
    folder, _, _ = base
    data = write(tmp_path / "accents.txt", (NEW + "Straße, café: €\n") * 3)
    old = load_checkpoint(folder)
    V = old.tokenizer.vocab_size
    result = run(config(base, tmp_path / "ft", data=data, extend_vocab=True))
    assert result.added == ["ß", "é", "€"]
    assert result.tokenizer.chars == old.tokenizer.chars + ["ß", "é", "€"]
    wte = result.base.params["wte.weight"]                      # the starting point of training
    assert wte.shape == (V + 3, 16) and wte.dtype == np.float32
    np.testing.assert_array_equal(wte[:V], old.model.params["wte.weight"])
    assert 0.005 < wte[V:].std() < 0.05                        # new rows ~ N(0, 0.02), not zero
    ckpt = load_checkpoint(tmp_path / "ft")
    assert ckpt.model.config.vocab_size == V + 3 and ckpt.tokenizer == result.tokenizer
    evals = result.state["history"]["eval"]
    assert evals[-1][2] < evals[0][2] - 0.1                    # it trains
    assert not np.array_equal(ckpt.model.params["wte.weight"][V:], wte[V:])   # new rows learned


def test_add_token_rows_is_seeded_and_leaves_the_model_alone(base):
    model = load_checkpoint(base[0]).model
    wte = model.params["wte.weight"].copy()
    a = add_token_rows(model, 2, np.random.default_rng(5))
    b = add_token_rows(model, 2, np.random.default_rng(5))
    np.testing.assert_array_equal(a.params["wte.weight"], b.params["wte.weight"])
    np.testing.assert_array_equal(model.params["wte.weight"], wte)
    assert a.config.vocab_size == model.config.vocab_size + 2


def test_lora_freezes_the_base_and_merges_exactly(base, tmp_path, capsys):
    folder, _, new = base
    before = snapshot(folder)
    out = tmp_path / "lora"
    assert main(["finetune", "--init-from", str(folder), "--data", new, "--out-dir", str(out),
                 "--max-iters", "20", "--batch-size", "8", "--eval-interval", "10",
                 "--eval-iters", "2", "--learning-rate", "1e-2", "--warmup-iters", "2",
                 "--lora-rank", "2", "--lora-alpha", "4", "--lora-targets", "attn.c_attn,mlp.c_fc",
                 "--sample-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert snapshot(folder) == before
    base_model = load_checkpoint(folder).model
    C, L, r = 16, 2, 2
    trainable = L * (r * (C + 3 * C) + r * (C + 4 * C))
    total = base_model.num_params() + trainable
    assert f"trainable parameters: {trainable:,} of {total:,}" in printed
    assert {"adapters.safetensors", "checkpoint.safetensors", "loss.png", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}
    lora = LoRA.load(out / ADAPTERS, base_model)
    assert lora.config.rank == 2 and lora.config.targets == ("attn.c_attn", "mlp.c_fc")
    assert lora.num_trainable() == trainable and lora.num_total() == total
    merged = load_checkpoint(out).model
    s = lora.config.scale
    targeted = {f"h.{i}.{t}.weight" for i in range(L) for t in lora.config.targets}
    for name, w in base_model.params.items():
        if name in targeted:
            prefix = name[:-len("weight")]
            A, B = lora.adapters[prefix + "lora_A"], lora.adapters[prefix + "lora_B"]
            assert np.abs(B).max() > 0                          # the adapter learned something
            np.testing.assert_allclose(merged.params[name], w + s * (A @ B), rtol=1e-6, atol=1e-7)
            assert not np.array_equal(merged.params[name], w)
        else:
            np.testing.assert_array_equal(merged.params[name], w)   # bit-identical
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    np.testing.assert_allclose(merged.forward(idx), lora.forward(idx), rtol=1e-5, atol=1e-5)
    assert main(["sample", "--ckpt", str(out), "--max-new-tokens", "5"]) == 0


def test_lora_result_object(base, tmp_path):
    result = run(config(base, tmp_path / "lora", lora_rank=3, max_iters=10))
    assert result.lora is not None and result.trainable == result.lora.num_trainable()
    assert set(result.lora.adapters) == {f"h.{i}.attn.c_attn.lora_{m}" for i in (0, 1) for m in "AB"}
    base_params = load_checkpoint(base[0]).model.params
    for k, v in result.base.params.items():                      # frozen in memory too
        np.testing.assert_array_equal(v, base_params[k])
    assert all(a.dtype == np.float32 for a in result.lora.adapters.values())


def test_gpt2_folder_finetunes_and_exports(tmp_path):
    from minillm import BPETokenizer, GPT, load_pretrained
    tok = BPETokenizer.train(OLD, 300, special_tokens=["<|endoftext|>"])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    gpt2 = tmp_path / "gpt2"
    model.save_pretrained(gpt2, tok)
    before = snapshot(gpt2)
    new = write(tmp_path / "new.txt", NEW)
    config = FinetuneConfig(init_from=str(gpt2), data=new, out_dir=str(tmp_path / "ft"), max_iters=15,
                        batch_size=8, learning_rate=3e-3, warmup_iters=2, eval_interval=15,
                        eval_iters=2, export_pretrained=str(tmp_path / "export"))
    result = run(config)
    assert snapshot(gpt2) == before
    evals = result.state["history"]["eval"]
    assert evals[-1][2] < evals[0][2]
    assert result.tokenizer.encode(NEW[:50]) == tok.encode(NEW[:50])
    exported, exported_tok = load_pretrained(tmp_path / "export")
    for k, v in result.model.params.items():
        np.testing.assert_array_equal(exported.params[k], v)
        assert not np.array_equal(v, model.params[k]) or k.endswith(".bias") or "ln" in k
    assert exported_tok.encode(NEW[:50]) == tok.encode(NEW[:50])
    with pytest.raises(ValueError, match="--extend-vocab works for character models only"):
        run(FinetuneConfig(**{**config.__dict__, "extend_vocab": True, "out_dir": str(tmp_path / "x")}))
    assert (tmp_path / "ft" / "checkpoint.safetensors").is_file()
    ckpt = load_checkpoint(tmp_path / "ft")
    assert ckpt.tokenizer.encode(NEW[:50]) == tok.encode(NEW[:50])
    for k, v in result.model.params.items():
        np.testing.assert_array_equal(ckpt.model.params[k], v)


@pytest.mark.parametrize("args, message", [
    ([], "--init-from is required"),
    (["--out-dir", "{base}"], "is the folder of --init-from"),
    (["--out-dir", "{base}/../base"], "is the folder of --init-from"),
    (["--export-pretrained", "{base}"], "is the folder of --init-from"),
    (["--init-from", "{tmp}/nothing"], "neither a minillm checkpoint folder"),
    (["--data", "{tmp}/missing.txt"], "does not exist"),
    (["--data", "{tmp}"], "is a directory"),
    (["--lora-rank", "2", "--lora-targets", "attn.q"], "unknown LoRA target projection 'attn.q'"),
    (["--export-pretrained", "{tmp}/gpt2"], "a character model cannot be exported"),
    (["--data", "{short}"], "is too short"),
])
def test_cli_errors_are_clear(base, tmp_path, capsys, args, message):
    folder, _, new = base
    short = write(tmp_path / "short.txt", NEW[:60])
    defaults = {"--init-from": str(folder), "--data": new, "--out-dir": str(tmp_path / "out"),
                "--max-iters": "2", "--sample-tokens": "0"}
    args = [a.format(base=folder, tmp=tmp_path, short=short) for a in args]
    if args:
        given = dict(zip(args[::2], args[1::2]))
        argv = [x for k, v in {**defaults, **given}.items() for x in (k, v)]
    else:
        argv = ["--data", new, "--out-dir", str(tmp_path / "out")]
    before = snapshot(folder)
    assert main(["finetune", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minillm finetune: error: ") and message in err, err
    assert snapshot(folder) == before


@pytest.mark.parametrize("args, message", [
    (["--lora-rank", "-1"], "argument --lora-rank: must be an integer >= 0, got -1"),
    (["--lora-alpha", "0"], "argument --lora-alpha: must be a number > 0, got 0.0"),
    (["--warmup-iters", "-1"], "argument --warmup-iters: must be an integer >= 0, got -1"),
    (["--max-iters", "0"], "argument --max-iters: must be an integer >= 1, got 0"),
    (["--eval-interval", "0"], "argument --eval-interval: must be an integer >= 1, got 0"),
    (["--beta1", "1"], r"argument --beta1: must be a number in [0, 1), got 1.0"),
    (["--learning-rate=-3e-4"], "argument --learning-rate: must be a number > 0"),
])
def test_options_are_checked_where_they_are_parsed(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--init-from", "x", "--data", "y", "--out-dir", "z", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_folder_holding_a_run_is_refused_unless_overwrite(base, tmp_path):
    out = tmp_path / "out"
    run(config(base, out, max_iters=10))
    before = snapshot(out)
    with pytest.raises(ValueError, match="already holds a run .*--overwrite"):
        run(config(base, out, max_iters=10))
    assert snapshot(out) == before
    result = run(config(base, out, max_iters=10, overwrite=True, seed=7))
    assert load_checkpoint(out).state["configs"]["finetune"]["seed"] == 7
    assert result.state["iter"] == 10


def test_best_and_last_are_saved_as_named(base, tmp_path):
    out = tmp_path / "out"
    result = run(config(base, out, lora_rank=2, max_iters=20))
    last, best = load_checkpoint(out), load_checkpoint(out / "best.safetensors")
    assert last.state["iter"] == 20 and best.state["iter"] == result.state["best_iter"]
    assert best.state["best_val"] == result.state["best_val"] == min(
        row[2] for row in result.state["history"]["eval"])
    for k, v in result.model.params.items():              # the last state is the merged model
        np.testing.assert_array_equal(last.model.params[k], v)


def test_add_token_rows_grows_an_untied_output_layer_too():
    from minillm import GPT
    m = GPT(GPTConfig.llama(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4))
    grown = add_token_rows(m, 2, np.random.default_rng(0))
    assert grown.params["wte.weight"].shape == grown.params["lm_head.weight"].shape == (7, 4)
    np.testing.assert_array_equal(grown.params["lm_head.weight"][:5], m.params["lm_head.weight"])
    assert grown.forward(np.array([[6, 1]])).shape == (1, 2, 7)
