"""Two processes on the CPU (gloo): the quickstart recipe under DDP writes one adapter and follows the loss
curve of a single process with the same global batch, and an interrupted DDP run resumes to the same
adapter, bit for bit."""

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.train.processes import QUICKSTART, SETS, kill_all_after_first_checkpoint, records, sets, tune_cmd
from tune import recipe as recipe_io
from tune.errors import TuneError
from tune.train.sft import train


@pytest.mark.slow
def test_ddp_writes_one_adapter_and_matches_a_single_process(ddp_run, tmp_path):
    out, result = ddp_run
    # Rank 0 alone prints: every line once, the batch arithmetic included.
    assert result.stdout.count("step     1/16") == 1 and result.stdout.count("done: 16 steps") == 1
    assert ("distributed: 2 processes (DDP, a full copy each, gloo); global batch = 4 per device x 1 accumulation "
            "x 2 processes = 8 rows per step") in result.stdout
    assert "Traceback" not in result.stderr
    # Rank 0 alone writes: one adapter, no leftovers, and every checkpoint complete with both RNG states.
    names = sorted(p.name for p in out.iterdir())
    assert names.count("adapter_model.safetensors") == 1 and ".staging" not in names
    assert {"loss_curve.png", "metrics.jsonl", "run.json", "recipe.yaml"} <= set(names)
    run = json.loads((out / "run.json").read_text())
    assert (run["processes"], run["distributed"], run["steps"]) == (2, "ddp", 16)
    manifest = json.loads((out / "checkpoints" / "checkpoint-16" / "manifest.json").read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])
    assert len([r for r in records(out) if "loss" in r]) == 16  # one log line per step, not one per process

    single = tmp_path / "single"
    recipe = recipe_io.load(QUICKSTART, SETS + [f"output.dir={single}", "train.batch_size=8"])
    train(recipe, QUICKSTART, echo=lambda line: None)

    # Same examples in every step (accelerate gives process i the batches i, i+2, ... of the one seeded order),
    # float32, the same initial adapter (same seed; DDP also broadcasts rank 0's weights). What may differ is
    # rounding: the averaged all-reduce of two half-batch gradients against one full-batch sum, and matmuls
    # over differently padded micro-batches. Measured: at most 2.3e-7 relative (one or two float32 ulps) over
    # 16 steps. A single different example in a global batch moves the loss by ~1e-3 relative (what the
    # ragged end of an epoch does), so 1e-5 tells rounding from a change in data order or seed.
    ddp_logs, single_logs = records(out), records(single)
    assert [r["step"] for r in ddp_logs] == [r["step"] for r in single_logs]
    for ours, theirs in zip(ddp_logs, single_logs):
        for key in ("loss", "grad_norm", "learning_rate"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5), (ours["step"], key)
    # The eval loss is a mean of per-batch token means, and DDP evaluates in per-device batches of 4 (the
    # 17 held-out rows padded to an even split) where one process uses batches of 8: a different average of
    # the same losses, measured 4e-5 apart. 1e-3 still catches evaluating other rows or another model.
    assert ddp_logs[-1]["eval_loss"] == pytest.approx(single_logs[-1]["eval_loss"], rel=1e-3)
    expected, actual = load_file(single / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.allclose(actual[key], expected[key], rtol=1e-4, atol=1e-6), key


@pytest.mark.slow
def test_an_interrupted_ddp_run_resumes_to_the_same_adapter(ddp_run, tmp_path):
    straight, _ = ddp_run
    out = tmp_path / "out"
    command = tune_cmd("run", QUICKSTART, "--nproc", 2, *sets(f"output.dir={out}", "train.batch_size=4"))
    first = kill_all_after_first_checkpoint(command, out)
    assert first.exists() and not (out / "adapter_model.safetensors").exists()

    # The checkpoint holds two processes' RNG states: resuming it in one process would change the batches.
    with pytest.raises(TuneError) as caught:
        train(recipe_io.load(QUICKSTART, SETS + [f"output.dir={out}", "train.batch_size=4"]), QUICKSTART,
              echo=lambda line: None, resume=True)
    assert caught.value.problems[0].endswith("was written by 2 processes and this run has 1; resume with --nproc 2")

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from " in resumed.stdout and resumed.stdout.count("resuming from") == 1
    expected, actual = load_file(straight / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key  # bitwise: same batches, same RNG per process
    assert [(r["step"], r.get("loss")) for r in records(out)] == [(r["step"], r.get("loss")) for r in records(straight)]
