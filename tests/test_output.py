"""Nothing lost, nothing mixed: --overwrite deletes only tune's own earlier output, one command writes an
output dir at a time (a killed one never blocks the next), and every refusal is one line, exit 2, with
the folders it protects hashed before and after."""

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import SAMPLE_DATA, write_recipe
from tune.cli import app
from tune.errors import TuneError
from tune.output import check_replaceable, exclusive


def digest(folder: Path) -> str:
    """Every file's path and bytes under `folder`: equal before and after means nothing was touched."""
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def cli(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert "Traceback" not in result.output + result.stderr
    return result


def test_overwrite_refuses_the_folder_holding_the_training_data(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE_DATA, data / "train.jsonl")
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(data / "train.jsonl")})
    before = digest(data)
    result = cli("run", recipe, "--set", f"output.dir={data}", "--overwrite")
    assert result.exit_code == 2
    assert result.stderr == (f"output.dir: {data} holds data.train data (source 1) ({data / 'train.jsonl'}); "
                             "write the output somewhere else\n")
    assert digest(data) == before


def test_overwrite_refuses_the_base_model_and_a_folder_inside_it(tiny_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": str(copy)})
    before = digest(copy)
    for target in (copy, copy / "runs"):
        result = cli("run", recipe, "--set", f"output.dir={target}", "--overwrite")
        assert result.exit_code == 2
        where = "is" if target == copy else "is inside"
        assert result.stderr == f"output.dir: {target} {where} the base model ({copy}); write the output somewhere else\n"
    assert digest(copy) == before


def test_overwrite_refuses_a_folder_tune_did_not_write(tiny_model, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    result = cli("run", write_recipe(tmp_path / "r.yaml"), "--set", f"output.dir={mine}", "--overwrite")
    assert result.exit_code == 2
    assert result.stderr == (f"output.dir: {mine} was not written by tune (it has neither recipe.yaml and "
                             "versions.json nor export.json), so --overwrite will not delete it; choose another dir\n")
    assert (mine / "notes.txt").read_text() == "my notes"


def test_overwrite_replaces_an_earlier_run_but_export_refuses_the_runs_parent(trained_once, tmp_path):
    recipe, out = trained_once
    runs = out.parent  # holds the run (and its recipe): never an export target
    before = digest(runs)
    result = cli("export", out, runs, "--format", "adapter", "--overwrite")
    assert result.exit_code == 2
    assert result.stderr == f"OUT: {runs.resolve()} holds the adapter run ({out.resolve()}); write the output somewhere else\n"
    assert digest(runs) == before
    again = cli("run", recipe, "--overwrite", "--set", "train.max_steps=2")  # a run dir tune wrote: replaced
    assert again.exit_code == 0, again.stderr


@pytest.fixture
def trained_once(tiny_model, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 2})
    assert cli("run", recipe).exit_code == 0
    return recipe, tmp_path / "out"


def test_check_replaceable_names_a_nested_run(tmp_path):
    outer = tmp_path / "outer"
    for folder in (outer, outer / "inner"):
        folder.mkdir()
        (folder / "recipe.yaml").write_text("x")
        (folder / "versions.json").write_text("{}")
    with pytest.raises(TuneError) as caught:
        check_replaceable(outer, {}, "output.dir", overwrite=True)
    assert caught.value.problems == [f"output.dir: {outer} holds another tune output ({outer / 'inner'}), which "
                                     "--overwrite would delete; choose another dir"]
    check_replaceable(outer / "inner", {}, "output.dir", overwrite=True)  # a run of its own: replaceable


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_killed_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from tune.output import exclusive\n"
        f"with exclusive(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TuneError) as caught:
        with exclusive(out):
            pass
    assert caught.value.problems == [f"output.dir: {out} is being written by another tune process (pid {holder.pid}); "
                                     "wait for it to finish, or choose another dir"]
    holder.kill()
    holder.wait()
    with exclusive(out):  # the OS released the dead holder's lock; its file is reused
        assert (tmp_path / ".run.tune-lock").read_text().strip() == str(__import__("os").getpid())
    assert not (tmp_path / ".run.tune-lock").exists()


def test_two_runs_into_one_dir_do_not_both_proceed(tiny_model, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 400})
    command = [sys.executable, "-m", "tune", "run", str(recipe)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / ".out.tune-lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    second = subprocess.run(command, capture_output=True, text=True)
    still_running = first.poll() is None
    first.kill()
    first.wait()
    assert still_running, "the first run ended before the second one tried; raise its max_steps"
    assert second.returncode == 2
    assert second.stderr == (f"output.dir: {(tmp_path / 'out').absolute()} is being written by another tune "
                             f"process (pid {first.pid}); wait for it to finish, or choose another dir\n")
