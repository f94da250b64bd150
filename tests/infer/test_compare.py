"""`tune compare`: two tiny runs side by side from their output dirs alone: the recipe keys that differ,
their losses as run.json has them, the probe and eval scores they saved, and the overlaid curves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_recipe


def tune(*args):
    return subprocess.run([sys.executable, "-m", "tune", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"COLUMNS": "200"})


@pytest.fixture(scope="module")
def two_runs(tiny_model, tmp_path_factory):
    from tune import recipe as recipe_io
    from tune.train.sft import train

    runs = []
    for name, rate in (("slow", 1e-3), ("fast", 5e-3)):
        path = write_recipe(tmp_path_factory.mktemp(name) / "r.yaml", train={"max_steps": 4, "learning_rate": rate})
        runs.append(train(recipe_io.load(path, []), path, echo=lambda line: None).summary)
    return runs


def test_the_table_shows_what_differs_and_what_each_run_measured(two_runs, tmp_path):
    from tune.infer.compare import compare

    slow, fast = (run["output_dir"] for run in two_runs)
    eval_dir = Path(fast) / "eval"
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "lm-eval.json").write_text(json.dumps({"tasks": {"my_task": {"tuned": {"acc": 0.5, "acc_stderr": 0.1}}}}))
    found = compare([slow, fast], tmp_path / "curves.png")
    rows = dict(found["rows"])
    assert found["labels"] == [slow, fast]  # both folders are named out: their paths tell them apart
    assert rows["train.learning_rate"] == ["0.001", "0.005"]
    assert "output.dir" not in rows and "model.name" not in rows  # the same in both, or says nothing
    assert rows["first loss"] == [f"{run['first_loss']:.4f}" for run in two_runs]
    assert rows["last loss"] == [f"{run['last_loss']:.4f}" for run in two_runs]
    assert rows["steps"] == ["4", "4"]
    assert all(float(cell) > 0.1 for cell in rows["peak RSS GiB (process)"])  # torch alone takes more
    assert rows["lm-eval my_task acc"] == ["-", "0.5000"]
    assert found["plot"] == str(tmp_path / "curves.png") and (tmp_path / "curves.png").stat().st_size > 10_000


def test_through_the_cli_with_markdown_and_bad_dirs(two_runs, tmp_path):
    slow, fast = (run["output_dir"] for run in two_runs)
    result = tune("compare", slow, fast, "--plot", tmp_path / "c.png", "--markdown", tmp_path / "c.md")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "c.md").read_text().splitlines()
    assert lines[0] == f"| | {slow} | {fast} |" and "| train.learning_rate | 0.001 | 0.005 |" in lines
    assert "train.learning_rate" in result.stdout
    result = tune("compare", slow, tmp_path)
    assert (result.returncode, result.stderr) == (
        2, f"{tmp_path}: not a finished `tune run` output dir (it needs run.json and recipe.yaml)\n")
    result = tune("compare", slow)
    assert (result.returncode, result.stderr) == (2, "tune compare needs at least two run dirs\n")
