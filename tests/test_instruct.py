"""Instruction tuning (minillm/training/instruct.py, finetune --task instruct): the template,
masked targets, records and their errors, task-balanced batches, batched greedy decoding equal
to generate's, stopping at the end marker, a run that learns, sample --instruction, eval."""
import json

import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.cli import main
from minillm.core.sampling import generate
from minillm.formats.checkpoint import load_checkpoint
from minillm.tokenizers import CharTokenizer
from minillm.training.finetune import FinetuneConfig, finetune
from minillm.training.instruct import (TEMPLATE, Template, encode_records, example_sampler,
                                       exact_match, greedy_decode, instruct_parts, per_task,
                                       read_records, respond, sft_batch)
from minillm.training.tasks import task_records


class NoProgress:
    def update(self, *a):
        pass

    def message(self, *a):
        pass


def silent(*_):
    pass


def test_the_template_and_its_characters():
    with_input = {"instruction": "reverse", "input": "hello", "output": "olleh"}
    without = {"instruction": "add two and five", "input": "", "output": "seven"}
    assert TEMPLATE.text(with_input) == "Q: reverse: hello\nA: olleh\n\n"
    assert TEMPLATE.text(without) == "Q: add two and five\nA: seven\n\n"
    assert set(TEMPLATE.characters()) == set("Q: \nA")
    shakespeare = CharTokenizer.from_text(
        "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    assert not shakespeare.missing(TEMPLATE.characters())      # the model knows them all
    assert Template.from_dict(TEMPLATE.to_dict()) == TEMPLATE


@pytest.mark.parametrize("mask", [True, False])
def test_targets_are_the_next_tokens_and_minus_one_on_the_prompt(mask):
    tok = CharTokenizer.from_text("Q: reverse:abc\nA")
    records = [{"instruction": "reverse", "input": "abc", "output": "cba"},
               {"instruction": "reverse", "input": "a", "output": "a"}]
    examples = encode_records(records, TEMPLATE, tok)
    x, y = sft_batch(examples, mask_prompt=mask)
    for row, (prompt, response) in enumerate(examples):
        ids = prompt + response
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1]
        kept = y[row] >= 0
        first = len(prompt) - 1 if mask else 0           # where the targets begin
        assert kept.tolist() == [first <= t < n for t in range(x.shape[1])]
        assert y[row, kept].tolist() == ids[first + 1:]
        if mask:
            assert tok.decode(y[row, kept].tolist()) == records[row]["output"] + "\n\n"


def test_records_files_and_their_errors(tmp_path):
    rows = [{"instruction": "reverse", "input": "ab", "output": "ba"},
            {"instruction": "say hi", "output": "hi", "task": "greet"}]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    array = tmp_path / "r.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    for path in (jsonl, array):
        records = read_records(path)
        assert [r["task"] for r in records] == ["all", "greet"] and records[1]["input"] == ""
    bad = tmp_path / "bad.jsonl"
    for text, message in (('{"instruction": "x"}', "line 1: 'output' must be a non-empty"),
                          ('{"instruction": "x", "output": "y"}\n{', "line 2: not JSON"),
                          ('["x"]', "expected an object")):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            read_records(bad)
    (tmp_path / "list.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="must hold a list"):
        read_records(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="is not an instruction dataset"):
        instruct_parts(str(tmp_path / "none.jsonl"))


def test_a_file_is_split_with_its_seed(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"say {i}", "output": "x"}) + "\n"
                            for i in range(50)), encoding="utf-8")
    parts = instruct_parts(str(path), seed=3, val_frac=0.2)
    assert len(parts["train"]) == 40 and len(parts["val"]) == 10
    names = [r["instruction"] for p in parts.values() for r in p]
    assert sorted(names) == sorted(f"say {i}" for i in range(50))
    assert instruct_parts(str(path), seed=3, val_frac=0.2) == parts
    assert instruct_parts(str(path), seed=4, val_frac=0.2) != parts


def test_batches_draw_every_task_alike():
    records = task_records("train")
    names = sorted({r["task"] for r in records})
    tasks = [r["task"] for r in records]
    examples = [([names.index(t), 0], [0]) for t in tasks]    # x[:, 0] says the task
    x, y = example_sampler(examples, tasks, 3000, True)(np.random.default_rng(0))
    shares = np.bincount(x[:, 0], minlength=6) / 3000
    assert tasks.count("add") / len(tasks) < 0.01               # 80 of 10,810 records
    assert np.abs(shares - 1 / 6).max() < 0.03                  # drawn by task: a sixth each
    assert (y[:, 0] == -1).all() and (y[:, 1] == 0).all()       # the prompt is masked


def test_greedy_decode_is_generate_greedy_batched():
    model = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=3)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 13, size=n).tolist() for n in (3, 5, 3, 14, 16)]
    out = greedy_decode(model, prompts, end_ids=[99])            # a marker that never comes
    for prompt, new in zip(prompts, out):
        assert new == list(generate(model, prompt, 16 - len(prompt), greedy=True))
    stop = out[0][2]                                             # make its third token the end
    first = out[0].index(stop) + 1
    assert greedy_decode(model, prompts[:1], end_ids=[stop]) == [out[0][:first]]


class Scripted:
    """A model whose greedy continuation is a fixed script of token ids."""

    def __init__(self, script, vocab_size):
        self.script, self.V, self.step = script, vocab_size, 0

        class Config:
            block_size = 64
        self.config = Config()

    def new_kv_cache(self, **_):
        class Cache:
            length = 0
            rolling = False
        return Cache()

    def forward(self, idx, kv_cache=None, last_only=False):
        logits = np.zeros((idx.shape[0], 1, self.V))
        logits[:, 0, self.script[min(self.step, len(self.script) - 1)]] = 10.0
        self.step += 1
        return logits


def test_respond_stops_at_the_end_marker_and_never_prints_it():
    tok = CharTokenizer.from_text("Q: say\nA himore\n")
    for text, expected in (("hi\n\nmore", "hi"), ("h\ni\n\n", "h\ni"), ("hi\nQ", "hi\nQ")):
        model = Scripted(tok.encode(text), tok.vocab_size)
        pieces = list(respond(model, tok, {"instruction": "say", "input": ""}, TEMPLATE,
                              max_new_tokens=len(text), greedy=True))
        assert "".join(pieces) == expected
        assert not any("\n\n" in p for p in pieces)


def test_exact_match_counts_only_complete_answers():
    tok = CharTokenizer.from_text("Q: say\nA hixyz\n")
    records = [{"task": "t", "instruction": "say", "input": "", "output": "hi"}]
    for text, right in (("hi\n\n", 1.0), ("hix\n\n", 0.0), ("hi", 0.0)):
        model = Scripted(tok.encode(text) + tok.encode("z" * 40), tok.vocab_size)
        scores, responses = exact_match(model, tok, records, max_new_tokens=len(text))
        assert scores == {"t": right, "all": right}, text


def test_a_run_learns_and_the_commands_use_its_template(char_base, tmp_path, capsys):
    records = [r for r in task_records("train") if r["task"] in ("count", "capitalise")][::4]
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    lines = []
    result = finetune(FinetuneConfig(task="instruct", init_from=str(char_base), data=str(data),
                                     out_dir=str(tmp_path / "sft"), max_iters=150, batch_size=16,
                                     learning_rate=3e-3, min_lr=3e-4, eval_interval=50,
                                     eval_iters=2, sample_tokens=0),
                      log=lines.append, progress=NoProgress())
    assert any("loss on: the response tokens only" in line for line in lines)
    scores = result.metrics["val_exact_match"]
    assert scores["count"] > 0.5                       # before training: 0 (tested below)
    ckpt = load_checkpoint(tmp_path / "sft")
    assert ckpt.task["template"] == TEMPLATE.to_dict() and ckpt.task["mask_prompt"] is True
    assert json.loads((tmp_path / "sft" / "metrics.json").read_text())["iter"] == 150

    assert main(["sample", "--ckpt", str(tmp_path / "sft"), "--greedy", "--instruction",
                 "count the letters", "--input", "hello"]) == 0
    answer = capsys.readouterr().out
    assert answer.endswith("\n") and "\n" not in answer[:-1] and "Q:" not in answer
    chosen = per_task(instruct_parts(str(data))["val"], 50)
    expected, responses = exact_match(ckpt.model, ckpt.tokenizer, chosen)
    assert expected == scores
    assert main(["eval", "--ckpt", str(tmp_path / "sft"), "--data", str(data), "--split",
                 "val"]) == 0
    assert f"count {scores['count']:.2f}" in capsys.readouterr().out
    # the untrained base, asked the same records with the default template, gets none right
    assert main(["eval", "--ckpt", str(char_base), "--data", str(data), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "all 0.00" in out and "not instruction-tuned" in out


def test_unmasked_training_trains_on_every_token(char_base, tmp_path):
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"instruction": "say", "input": w, "output": w}) + "\n"
                            for w in ("ab", "cd", "ef", "gh") * 5), encoding="utf-8")
    lines = []
    result = finetune(FinetuneConfig(task="instruct", init_from=str(char_base), data=str(data),
                                     out_dir=str(tmp_path / "all"), max_iters=2,
                                     eval_interval=2, eval_iters=1, mask_prompt=False,
                                     sample_tokens=0), log=lines.append, progress=NoProgress())
    assert any("loss on: every token" in line for line in lines)
    assert result.task["mask_prompt"] is False


def test_sample_refuses_mixed_options(char_base, capsys):
    assert main(["sample", "--ckpt", str(char_base), "--input", "x"]) == 1
    assert "--input goes with --instruction" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(char_base), "--instruction", "x", "--prompt", "y"]) == 1
    assert "not both" in capsys.readouterr().err


def test_records_longer_than_the_context_are_left_out(char_base, tmp_path):
    data = tmp_path / "r.jsonl"
    long = {"instruction": "say", "input": "a" * 60, "output": "b"}
    short = {"instruction": "say", "input": "ab", "output": "b"}
    data.write_text("".join(json.dumps(r) + "\n" for r in [long] * 3 + [short] * 20), "utf-8")
    lines = []
    finetune(FinetuneConfig(task="instruct", init_from=str(char_base), data=str(data),
                            out_dir=str(tmp_path / "o"), max_iters=1, eval_interval=1,
                            eval_iters=1, sample_tokens=0), log=lines.append,
             progress=NoProgress())
    assert any("longer than the context" in line and "left out" in line for line in lines)
    data.write_text(json.dumps(long) + "\n" + json.dumps(long) + "\n", "utf-8")
    with pytest.raises(ValueError, match="record is longer than the model's context"):
        finetune(FinetuneConfig(task="instruct", init_from=str(char_base), data=str(data),
                                out_dir=str(tmp_path / "p"), max_iters=1, sample_tokens=0),
                 log=silent, progress=NoProgress())
