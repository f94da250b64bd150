"""Resume after SIGKILL gives the same adapter, bit for bit; incomplete or tampered checkpoints are
never used; a non-finite step stops the run before it can poison the adapter."""

import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import SAMPLE_DATA, ctrl_c_at, write_recipe
from tune import recipe as recipe_io
from tune.errors import TrainingError, TuneError
from tune.train.checkpoints import write_manifest
from tune.train.sft import train

# Dropout on, so the resumed run must also restore the RNG state to match.
RESUMABLE = {"adapter": {"dropout": 0.1},
             "train": {"max_steps": 24, "save_steps": 8, "keep_checkpoints": 2, "batch_size": 4,
                       "logging_steps": 4, "learning_rate": 2e-3}}
# logging_steps divides save_steps: a log window that spans a resume averages only the steps after it.


def tune_cmd(*args):
    return [sys.executable, "-m", "tune", *map(str, args)]


def losses(out: Path) -> list:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_model, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", **RESUMABLE)
    straight = tmp_path / "straight"
    done = subprocess.run(tune_cmd("run", recipe, "--set", f"output.dir={straight}"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen(tune_cmd("run", recipe, "--set", f"output.dir={killed}"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "checkpoint-8" / "manifest.json"
    deadline = time.time() + 300
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "adapter_model.safetensors").exists()

    # What a kill in the middle of a checkpoint write leaves: a newer checkpoint without its manifest,
    # and one whose file no longer matches the manifest. Both must be passed over.
    newest = max((killed / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    half_written = killed / "checkpoints" / "checkpoint-22"
    subprocess.run(["cp", "-r", str(newest), str(half_written)], check=True)
    (half_written / "manifest.json").unlink()
    torn = killed / "checkpoints" / "checkpoint-23"
    subprocess.run(["cp", "-r", str(newest), str(torn)], check=True)
    with open(torn / "adapter_model.safetensors", "r+b") as handle:
        handle.truncate(100)

    resumed = subprocess.run(tune_cmd("run", recipe, "--set", f"output.dir={killed}", "--resume"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: ignoring {torn}: adapter_model.safetensors does not match its checksum" in resumed.stdout
    assert f"warning: ignoring {half_written}: no manifest (interrupted while being written)" in resumed.stdout
    assert f"resuming from {newest}" in resumed.stdout

    expected = load_file(straight / "adapter_model.safetensors")
    actual = load_file(killed / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key  # bitwise, not approximately
    assert losses(killed) == losses(straight)
    kept = sorted(p.name for p in (killed / "checkpoints").iterdir() if (p / "manifest.json").exists())
    assert kept == ["checkpoint-16", "checkpoint-24"]  # keep_checkpoints: 2


def unfinished_run(tmp_path, **overrides):
    """A completed run made to look as if it died after its last checkpoint."""
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 4, "save_steps": 2, **overrides})
    train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json"):
        (out / name).unlink()
    return recipe, out


class Planted:
    """Unpickling this touches a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_malicious_pickle_in_a_checkpoint_is_refused_without_running(tiny_model, tmp_path):
    recipe, out = unfinished_run(tmp_path)
    checkpoint = out / "checkpoints" / "checkpoint-4"
    marker = tmp_path / "pwned"
    (checkpoint / "rng_state.pth").write_bytes(pickle.dumps({"python": Planted(marker)}))
    write_manifest(checkpoint, 4)  # an attacker who can write files can rewrite the manifest too
    with pytest.raises(TrainingError) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)  # re-run: resumes implicitly
    assert caught.value.problems[0].startswith(f"{checkpoint}: refused to load a checkpoint file that holds "
                                               "more than tensors")
    assert not marker.exists()


def test_rerun_with_a_changed_recipe_is_refused(tiny_model, tmp_path):
    recipe, out = unfinished_run(tmp_path)
    with pytest.raises(TuneError) as caught:
        train(recipe_io.load(recipe, ["train.learning_rate=0.1", "adapter.r=4"]), recipe, echo=lambda line: None)
    assert caught.value.problems == [
        f"output.dir: {out} holds an unfinished run of a different recipe (adapter.alpha, adapter.r, "
        "train.learning_rate changed); resume with the same recipe, or pass --overwrite"]


def test_non_finite_loss_stops_at_that_step_and_keeps_the_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    from trl import SFTTrainer

    calls = {"n": 0}
    original = SFTTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", poisoned)
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 8, "save_steps": 2})
    with pytest.raises(TrainingError) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    assert caught.value.problems[0].startswith("step 5: the loss or gradients are not finite (NaN/inf, first in ")
    assert f"the last good checkpoint is {out / 'checkpoints' / 'checkpoint-4'}" in caught.value.problems[0]
    assert caught.value.exit_code == 3
    assert not (out / "adapter_model.safetensors").exists()
    kept = load_file(out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in kept.values())


@pytest.mark.parametrize("init, hint", [("default", ""), ("pissa", " (adapter.init: pissa starts from the base's own "
                                           "directions, whose scale takes a lower one than a default LoRA)")])
def test_a_loss_past_uniform_guessing_stops_the_run_with_what_to_change(tiny_model, tmp_path, monkeypatch, init, hint):
    import math
    import re

    from trl import SFTTrainer

    calls = {"n": 0}
    original = SFTTrainer.compute_loss

    def diverging(self, *args, **kwargs):  # from the 5th step on the loss is 3 x ln(V): finite, and broken
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        return loss * 0 + 3 * math.log(vocabulary) if calls["n"] >= 5 else loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", diverging)
    recipe = write_recipe(tmp_path / "r.yaml", adapter={"init": init},
                          train={"max_steps": 8, "save_steps": 2, "logging_steps": 1})
    with pytest.raises(TrainingError) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    problem = caught.value.problems[0]
    found = re.fullmatch(r"step 5: the loss rose from ([0-9.]+) \(step 1\) to ([0-9.]+), worse than guessing uniformly "
                         r"among the (\d+) tokens \(ln = ([0-9.]+)\): training diverged and was stopped; the last "
                         r"checkpoint is (.+)\. Lower train\.learning_rate(.*)", problem)
    assert found, problem
    first, loss, vocabulary, uniform, checkpoint, said = found.groups()
    assert float(loss) == round(3 * math.log(int(vocabulary)), 2) and float(uniform) == round(math.log(int(vocabulary)), 2)
    assert float(first) < float(uniform) * 1.5  # the tiny model's own first loss: near ln(V), under the threshold
    assert checkpoint == str(out / "checkpoints" / "checkpoint-4") and said == hint
    assert caught.value.exit_code == 3 and not (out / "adapter_model.safetensors").exists()


def test_out_of_memory_becomes_advice(tiny_model, tmp_path, monkeypatch):
    from trl import SFTTrainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "compute_loss", out_of_memory)
    recipe = write_recipe(tmp_path / "r.yaml")
    with pytest.raises(TrainingError) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    assert caught.value.problems[0].startswith("out of GPU memory: lower train.batch_size")


def test_disk_shortfall_is_reported_before_anything_is_written(tiny_model, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    recipe = write_recipe(tmp_path / "r.yaml")
    with pytest.raises(TuneError) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    assert caught.value.problems[0].startswith(f"output.dir: {tmp_path} has 1 MiB free but checkpoints need about")
    assert not (tmp_path / "out").exists()


def test_resuming_onto_changed_data_is_refused_unless_asked(tiny_model, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(SAMPLE_DATA.read_text())
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(data)}, train={"max_steps": 4, "save_steps": 2})
    train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json"):
        (out / name).unlink()  # as if it died after its last checkpoint
    data.write_text(SAMPLE_DATA.read_text().replace("Paris", "Lyon"))
    before = (out / "data_fingerprint.json").read_text()
    with pytest.raises(TuneError) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    assert caught.value.problems == [
        f"--resume: the data differs from what {out / 'checkpoints' / 'checkpoint-4'} was trained on (sources, "
        f"tokens_sha256; files: {data}); resuming would train the remaining steps on other data. Restore it, start "
        "over with --overwrite, or pass --allow-data-change to continue anyway"]
    assert (out / "data_fingerprint.json").read_text() == before  # still describes what the checkpoints saw
    result = train(recipe_io.load(recipe), recipe, echo=lambda line: None, allow_data_change=True)
    assert result.summary["resumed_from"] == str(out / "checkpoints" / "checkpoint-4")


def test_ctrl_c_says_where_the_run_stopped_and_how_to_continue(tiny_model, tmp_path, monkeypatch):
    from trl import SFTTrainer

    from tune.errors import Interrupted

    restore = ctrl_c_at(monkeypatch, SFTTrainer, 6)
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 8, "save_steps": 2})
    with pytest.raises(Interrupted) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    assert caught.value.exit_code == 130
    assert caught.value.problems == [f"interrupted at step 5: the last complete checkpoint is "
                                     f"{out / 'checkpoints' / 'checkpoint-4'}; continue by running the same "
                                     f"`tune run {recipe} ...` command (and --set options) with --resume"]
    restore()
    result = train(recipe_io.load(recipe), recipe, echo=lambda line: None, resume=True)
    assert result.summary["resumed_from"] == str(out / "checkpoints" / "checkpoint-4") and result.summary["steps"] == 8


def test_a_full_disk_during_a_checkpoint_keeps_the_last_complete_one(tiny_model, tmp_path, monkeypatch):
    import errno

    from transformers import Trainer

    original = Trainer._save_optimizer_and_scheduler

    def disk_full_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_step_6)
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 8, "save_steps": 2, "keep_checkpoints": 3})
    with pytest.raises(TrainingError) as caught:
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    assert caught.value.problems == [f"the disk is full at step 6: the checkpoint being written was removed; the "
                                     f"last complete checkpoint is {out / 'checkpoints' / 'checkpoint-4'}; continue "
                                     f"by running the same `tune run {recipe} ...` command (and --set options) with "
                                     "--resume (free space first)"]
    assert not (out / "checkpoints" / "checkpoint-6").exists()
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    result = train(recipe_io.load(recipe), recipe, echo=lambda line: None, resume=True)
    assert result.summary["resumed_from"] == str(out / "checkpoints" / "checkpoint-4")


def test_tokens_per_second_after_a_resume_counts_only_the_steps_this_process_trained(tiny_model, tmp_path,
                                                                                     monkeypatch):
    import shutil
    from types import SimpleNamespace

    from tune.train import run as skeleton

    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 8, "save_steps": 4})
    train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json"):
        (out / name).unlink()
    shutil.rmtree(out / "checkpoints" / "checkpoint-8")  # as if it died during step 5
    halfway = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["epoch"]

    monkeypatch.setattr(skeleton, "time", SimpleNamespace(perf_counter=iter([100.0, 110.0]).__next__))  # 10 s
    lines = []
    result = train(recipe_io.load(recipe), recipe, echo=lines.append, resume=True)
    tokens = int(next(line for line in lines if line.startswith("data: ")).split(", ")[1].split()[0])
    end = json.loads((out / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())["epoch"]
    assert result.summary["resumed_from"] == str(out / "checkpoints" / "checkpoint-4")
    assert 0 < halfway < end
    assert result.summary["train_seconds"] == 10.0
    assert result.summary["trained_tokens_per_second"] == round(tokens * (end - halfway) / 10.0, 1)


@pytest.fixture
def small_disk(tmp_path):
    """A real 70 MiB filesystem (tmpfs): room for the run's disk check (64 MiB spare), little more."""
    import shutil

    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small filesystem with")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=70m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {mounted.stderr.strip() or mounted.returncode}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_disk_filled_by_another_process_during_a_checkpoint_stops_the_run_cleanly(tiny_model, tmp_path, small_disk,
                                                                                   monkeypatch):
    import shutil

    from transformers import Trainer
    from typer.testing import CliRunner

    from tune.cli import app
    from tune.train import run as skeleton

    original, filler = Trainer._save_checkpoint, small_disk / "filler"

    def filled_before_step_4(self, *args, **kwargs):
        if self.state.global_step == 4:  # another process takes all but ~200 kB: the optimizer state no longer fits
            take = shutil.disk_usage(small_disk).free - 200_000
            subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'wb').write(bytes(int(sys.argv[2])))",
                            str(filler), str(take)], check=True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_save_checkpoint", filled_before_step_4)
    raised = []  # what the writer itself raised
    disk_full = skeleton.disk_full
    monkeypatch.setattr(skeleton, "disk_full", lambda exc, *a, **kw: raised.append(exc) or disk_full(exc, *a, **kw))
    out = small_disk / "out"
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 6, "save_steps": 2}, output={"dir": str(out)})
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 3, result.output
    assert type(raised[0]) is RuntimeError and "unexpected pos" in str(raised[0])  # torch.save, not an OSError
    assert result.stderr == (f"the disk is full at step 4: the checkpoint being written was removed; the last complete "
                             f"checkpoint is {out / 'checkpoints' / 'checkpoint-2'}; continue by running the same "
                             f"`tune run {recipe} ...` command (and --set options) with --resume (free space first)\n")
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2"]

    filler.unlink()
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    resumed = CliRunner().invoke(app, ["run", str(recipe), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {out / 'checkpoints' / 'checkpoint-2'}" in resumed.stdout
    assert (out / "adapter_model.safetensors").is_file()


def test_any_other_failure_while_writing_a_checkpoint_stops_the_run_the_same_way(tiny_model, tmp_path, monkeypatch):
    import errno

    from transformers import Trainer

    original = Trainer._save_rng_state

    def fails_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.EIO, "Input/output error")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", fails_at_step_4)
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 6, "save_steps": 2})
    with pytest.raises(TrainingError) as caught:  # plenty of free space: not a full disk
        train(recipe_io.load(recipe), recipe, echo=lambda line: None)
    out = tmp_path / "out"
    assert caught.value.problems == [f"writing a checkpoint failed (OSError: [Errno 5] Input/output error) at step 4: "
                                     f"the checkpoint being written was removed; the last complete checkpoint is "
                                     f"{out / 'checkpoints' / 'checkpoint-2'}; continue by running the same `tune run "
                                     f"{recipe} ...` command (and --set options) with --resume (fix that first)"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2"]
