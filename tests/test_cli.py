"""The CLI as users run it: a subprocess, its exit code and its exact lines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_recipe


def tune(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "tune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_validate_ok(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    result = tune("validate", path, "--set", "train.max_steps=50")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK (sft of tiny-llama, lora r=8")


def test_validate_typo_prints_one_line_with_suggestion(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: tiny-llama\ndata:\n  train: x.jsonl\ntrain:\n  learnig_rate: 0.1\n")
    result = tune("validate", path)
    assert result.returncode == 2
    assert result.stderr == f"{path}:6: train.learnig_rate: unknown key; did you mean 'learning_rate'?\n"
    assert result.stdout == ""


def test_validate_checks_data_files_and_their_columns(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n')
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(data), "eval": "missing.jsonl"})
    result = tune("validate", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}: {data}:row 1: needs columns instruction+output or prompt+completion; row has "
        "['answer', 'question'] (map yours with data.columns)",
        f"{path}: data.eval: data file not found: missing.jsonl (looked beside the recipe and in {Path.cwd()})",
    ]
    fixed = tune("validate", path, "--set", "data.columns={prompt: question, completion: answer}",
                 "--set", f"data.eval={data}")
    assert fixed.returncode == 0, fixed.stderr


def test_validate_does_not_import_torch(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    code = ("import sys; from typer.testing import CliRunner; from tune.cli import app; "
            f"r = CliRunner().invoke(app, ['validate', {str(path)!r}]); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_ls_and_cp(tmp_path):
    listing = tune("ls")
    assert listing.returncode == 0
    assert any(line.startswith("quickstart ") and "Offline quickstart" in line for line in listing.stdout.splitlines())
    assert tune("cp", "quickstart", tmp_path / "my.yaml").returncode == 0
    assert (tmp_path / "my.yaml").read_text() == (REPO / "recipes" / "quickstart.yaml").read_text()
    again = tune("cp", "quickstart", tmp_path / "my.yaml")
    assert (again.returncode, again.stderr) == (2, f"{tmp_path / 'my.yaml'}: already exists; pass --force to replace it\n")
    typo = tune("cp", "quickstrat", tmp_path / "x.yaml")
    assert (typo.returncode, typo.stderr) == (2, "quickstrat: no bundled recipe of that name; did you mean 'quickstart'?\n")


def test_copied_quickstart_validates_from_another_dir(tmp_path):
    """`tune cp` copies only the recipe; its bundled data path must still resolve."""
    assert tune("cp", "quickstart", tmp_path / "my.yaml", cwd=tmp_path).returncode == 0
    result = tune("validate", "my.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_copied_quickstart_runs_on_a_fresh_install(tmp_path, monkeypatch):
    """No `tune init-tiny` first: tiny-llama is built on first use, as a packaged GGUF is converted."""
    import os

    from tune.models.resolve import model_source
    from tune.recipe import ModelSection

    home = tmp_path / "fresh-home"
    assert tune("cp", "quickstart", "my.yaml", cwd=tmp_path).returncode == 0
    result = tune("run", "my.yaml", "--set", "train.max_steps=1", cwd=tmp_path, env=os.environ | {"TUNE_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    folder = home / "models" / "tiny-llama"
    assert result.stdout.splitlines()[0] == (f"model: building tiny-llama once ({folder}, as `tune init-tiny` does); "
                                             "later runs reuse it")
    assert "done: 1 steps in " in result.stdout
    monkeypatch.setenv("TUNE_HOME", str(home))
    heard = []
    assert model_source(ModelSection(name="tiny-llama"), heard.append) == str(folder) and heard == []


def test_run_writes_the_documented_files(tiny_model, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 3})
    result = tune("run", path, "--set", "train.learning_rate=1e-3", "--set", f"output.dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr
    assert "done: 3 steps in " in result.stdout and f"adapter: {tmp_path / 'a'}" in result.stdout
    assert "Traceback" not in result.stderr
    out = tmp_path / "a"
    for name in ("adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "versions.json",
                 "data_fingerprint.json", "metrics.jsonl", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert "learning_rate: 0.001" in (out / "recipe.yaml").read_text()
    assert json.loads((out / "run.json").read_text())["steps"] == 3

    again = tune("run", path, "--set", f"output.dir={out}")
    assert again.returncode == 2
    assert again.stderr == (f"output.dir: {out} holds a finished run; choose another with "
                            "--set output.dir=... or pass --overwrite\n")


@pytest.mark.parametrize("row, message", [
    ('{"instruction": "hi"}', "missing or empty column 'output' (map yours with data.columns.output)"),
    ('{"instruction": "hi", "output": 3}', "column 'output' must be text, got int"),
])
def test_run_bad_row_is_one_line_and_writes_nothing(tiny_model, tmp_path, row, message):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n' + row + "\n")
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(data)})
    result = tune("run", path)
    assert result.returncode == 2
    assert result.stderr == f"{data}:row 2: {message}\n"
    assert not (tmp_path / "out").exists()


def test_run_unknown_local_model_is_one_line(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model={"name": "./no/such/model"})
    result = tune("run", path)
    assert (result.returncode, result.stderr) == (2, "model.name: no such folder: ./no/such/model\n")


def test_python_dash_m_and_help():
    result = tune("--help")
    assert result.returncode == 0 and "validate" in result.stdout and "run" in result.stdout


@pytest.mark.slow
def test_the_readme_quickstart_runs_to_the_end(tune_home, tmp_path):
    """`tune quickstart` as the README's first command runs it: train, merge, GGUF export, answers (a change to
    the export command's arguments once stopped it at the GGUF step with nothing else failing)."""
    result = tune("quickstart", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gguf export in runs/quickstart-gguf" in result.stdout
    assert (tmp_path / "runs" / "quickstart-gguf" / "Modelfile").is_file()
