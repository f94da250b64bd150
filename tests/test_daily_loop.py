"""The daily loop: sample files validate and check, preview marks trained tokens, generation is
seeded and bounded, eval agrees with the trainer, tracking writes TensorBoard events and a PNG."""

import json
import math
import struct
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, write_recipe
from tune.cli import app

QUICKSTARTS = ["quickstart", "quickstart-chat", "quickstart-completion"]


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.mark.parametrize("name", QUICKSTARTS)
def test_every_format_sample_validates_and_checks(tiny_model, name):
    recipe = REPO / "recipes" / f"{name}.yaml"
    assert cli("validate", recipe).exit_code == 0
    result = cli("data", "check", recipe)
    assert result.exit_code == 0, result.stderr
    assert result.output.splitlines()[-1] == "data check: OK"
    assert "warning: " not in result.output  # the bundled samples have no duplicates or overlap


def test_data_check_fails_on_bad_rows_and_reports_duplicates(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    result = cli("data", "check", write_recipe(tmp_path / "r.yaml", data={"train": str(data)}))
    assert result.exit_code == 2
    assert f"warning: {data}:row 2: duplicate of {data}:row 1" in result.output
    assert result.stderr == (f"{data}:row 3: needs columns instruction+output or prompt+completion; "
                             "row has ['prompt'] (map yours with data.columns)\n")


def test_preview_marks_trained_tokens_when_piped(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "What is 2 plus 2?", "completion": "4."}\n')
    result = cli("data", "preview", write_recipe(tmp_path / "r.yaml", data={"train": str(data)}), "-n", "1")
    assert result.exit_code == 0, result.stderr
    lines = result.output.splitlines()
    assert lines[0].startswith(f"--- {data}:row 1: ") and lines[0].endswith(" trained")
    assert "\n".join(lines[1:]) == ("<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
                                    "[[4.<|im_end|>]]")


def test_generation_is_seeded_and_bounded(tiny_model):
    from tune.infer.generate import Sampling, generate_ids, load_for_inference

    model, tokenizer = load_for_inference(tiny_model)
    sample = lambda seed, n=12: generate_ids(model, tokenizer, "hello", Sampling(n, 1.0, 50, 0.95, seed))  # noqa
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    assert len(sample(3, 5)) <= 5 and sample(3, 5) == sample(3)[:5]


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory):
    from tune import recipe as recipe_io
    from tune.train.sft import train

    folder = tmp_path_factory.mktemp("run")
    eval_rows = folder / "eval.jsonl"
    eval_rows.write_text("".join(json.dumps({"instruction": f"What is {a} plus 2?", "output": f"{a} plus 2 is {a + 2}."})
                                 + "\n" for a in range(3, 9)))
    path = write_recipe(folder / "r.yaml", data={"eval": str(eval_rows)},
                        train={"max_steps": 6, "batch_size": 8, "logging_steps": 2, "report_to": ["tensorboard"]})
    summary = train(recipe_io.load(path), path, echo=lambda line: None).summary
    return folder / "out", eval_rows, summary


def test_eval_matches_the_trainers_eval_loss(trained_run):
    out, eval_rows, summary = trained_run
    result = cli("eval", out, "--data", eval_rows)
    assert result.exit_code == 0, result.stderr
    loss = float(result.output.split("loss ")[1].split(",")[0])
    perplexity = float(result.output.split("perplexity ")[1].split(",")[0].strip())
    assert result.output.startswith(f"{eval_rows}: 6 examples, ")
    assert loss == pytest.approx(summary["eval_loss"], abs=1e-4)  # one eval batch: same token-weighted mean
    assert perplexity == pytest.approx(math.exp(loss), rel=1e-3)


def test_tensorboard_events_hold_the_logged_losses(trained_run):
    from tensorboardX.proto import event_pb2

    out, _, _ = trained_run
    logged = {}
    for path in (out / "logs").glob("events.out.tfevents.*"):
        raw = path.read_bytes()
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack("<Q", raw[offset:offset + 8])
            event = event_pb2.Event.FromString(raw[offset + 12: offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                logged[(value.tag, event.step)] = value.simple_value
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = {("train/loss", r["step"]): r["loss"] for r in records if "loss" in r}
    expected.update({("eval/loss", r["step"]): r["eval_loss"] for r in records if "eval_loss" in r})
    assert expected and all(logged.get(key) == pytest.approx(value, rel=1e-5) for key, value in expected.items()), (sorted(logged), list((out / "logs").iterdir()))


def test_loss_curve_is_a_valid_png(trained_run):
    import matplotlib.image

    out, _, _ = trained_run
    png = out / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (700, 400)


def test_generate_data_writes_jsonl_and_chat_answers(trained_run, tmp_path):
    out, eval_rows, _ = trained_run
    target = tmp_path / "answers.jsonl"
    result = cli("generate", out, "--data", eval_rows, "--out", target, "--max-new-tokens", "4")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 6 and all(isinstance(row["response"], str) for row in rows)
    assert rows[0]["instruction"] == "What is 3 plus 2?"
    session = subprocess.run([sys.executable, "-m", "tune", "chat", str(out), "--max-new-tokens", "4"],
                             input="What is 3 plus 2?\n/reset\nHi\n/exit\n", capture_output=True, text=True)
    assert session.returncode == 0, session.stderr
    assert session.stdout.count("model> ") == 2


def test_schema_is_json_for_editors():
    schema = json.loads(cli("schema").output)
    assert {"model", "data", "adapter", "train", "output"} <= schema["properties"].keys()
    assert cli("schema", "--markdown").output.startswith("### `model`")
