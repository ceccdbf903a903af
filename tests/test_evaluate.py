"""The eval command (minillm/training/evaluate.py) on a text: loss, perplexity and bits per
character of the whole text or of its last tenth; wrong requests are refused clearly."""
import pytest

from minillm.cli import main
from minillm.formats.checkpoint import load_model
from minillm.training.data import split
from minillm.training.evaluate import EvalConfig, evaluate
from minillm.training.metrics import text_metrics

TEXT = "Speak, speak. You are all resolved rather to die than to famish?\n" * 20


def test_eval_on_a_text_and_its_last_tenth(char_base, tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text(TEXT, encoding="utf-8")
    model, tokenizer, _ = load_model(char_base)
    whole = evaluate(EvalConfig(ckpt=str(char_base), data=str(data)), log=lambda *_: None)
    assert whole["text"] == text_metrics(model, tokenizer, TEXT)
    assert main(["eval", "--ckpt", str(char_base), "--data", str(data), "--split", "val"]) == 0
    out = capsys.readouterr().out
    val = text_metrics(model, tokenizer, split(TEXT)[1])
    assert f"mean loss: {val['loss']:.4f} nats per token" in out
    assert f"perplexity: {val['perplexity']:.3f}" in out and "bits per character" in out


@pytest.mark.parametrize("args, message", [
    (["--split", "test"], "a text has no test part"),
    (["--data", "missing.txt"], "is not a known dataset"),
    (["--data", "missing.jsonl"], "the records file missing.jsonl does not exist"),
    (["--data", "sentiment"], "is labelled data, for a classifier"),
])
def test_eval_errors_are_clear(char_base, tmp_path, capsys, args, message):
    data = tmp_path / "t.txt"
    data.write_text(TEXT, encoding="utf-8")
    assert main(["eval", "--ckpt", str(char_base), "--data", str(data), *args]) == 1
    assert message in capsys.readouterr().err


def test_eval_refuses_characters_the_model_lacks(char_base, tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text(TEXT + "5 €\n", encoding="utf-8")
    assert main(["eval", "--ckpt", str(char_base), "--data", str(data)]) == 1
    assert "'5', '€'" in capsys.readouterr().err


def test_eval_of_records_without_tasks(char_base, tmp_path, capsys):
    data = tmp_path / "r.jsonl"
    data.write_text('{"instruction": "say", "output": "hi"}\n', encoding="utf-8")
    result = evaluate(EvalConfig(ckpt=str(char_base), data=str(data)), log=print)
    assert result["instruct"]["counts"] == {}
    assert "(1 records)" in capsys.readouterr().out
