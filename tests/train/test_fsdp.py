"""FSDP2 over gloo on the CPU (the sharded path a GPU cluster takes), on the quickstart recipe and the session's
tiny model: two "nodes" on this host, each a `tune run --nproc 1 -- --nnodes 2 ...` as on a cluster, form one
job whose adapter equals the DDP run's to float rounding; its checkpoints are sharded and rotated, its final
adapter is one plain PEFT adapter, and a killed FSDP run resumes to the same adapter, bit for bit."""

import json
import os
import socket
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.train.processes import QUICKSTART, kill_all_after_first_checkpoint, records, sets, tune_cmd

# The DDP run's global batch (4 per device x 2 processes); one complete checkpoint kept, so the run of 16 steps
# with save_steps 8 shows the rotation (checkpoint-8 deleted once checkpoint-16 is complete).
FSDP = ["distributed.strategy=fsdp", "train.batch_size=4", "train.keep_checkpoints=1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes(tiny_model, tmp_path_factory):
    """Node 0 and node 1 of one job, started as two commands on a cluster would be (torchrun's static
    rendezvous: node 0 listens at the endpoint). One thread per process, as torchrun sets for --nproc 2, so the
    job rounds as one node of two processes does."""
    out = tmp_path_factory.mktemp("fsdp") / "out"
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(tune_cmd("run", QUICKSTART, "--nproc", 1, *sets(f"output.dir={out}", *FSDP), "--",
                                       "--nnodes", 2, "--node-rank", rank, "--rdzv-endpoint", endpoint),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    return out, outputs


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.slow
def test_two_nodes_train_one_fsdp_job_that_matches_ddp(two_nodes, ddp_run):
    out, ((stdout, stderr), (stdout_1, _)) = two_nodes
    assert ("distributed: 2 processes (FSDP2 full_shard, gloo); global batch = 4 per device x 1 accumulation x 2 "
            "processes = 8 rows per step") in stdout
    assert stdout.count("done: 16 steps") == 1 and stdout_1 == "" and "Traceback" not in stderr  # rank 0 alone prints
    run = json.loads((out / "run.json").read_text())
    assert (run["processes"], run["distributed"], run["steps"]) == (2, "fsdp", 16)
    # Checkpoints hold each process's shard of the adapter and optimizer (no gather every save_steps) and
    # rotate like any others: keep_checkpoints 1 leaves only the last.
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-16"]
    files = set(json.loads((out / "checkpoints" / "checkpoint-16" / "manifest.json").read_text())["files"])
    assert {"pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp", "optimizer_0/__0_0.distcp",
            "optimizer_0/__1_0.distcp", "rng_state_0.pth", "rng_state_1.pth"} <= files

    # The same examples in every step, float32, the same initial adapter. What differs is rounding: FSDP
    # reduce-scatters the gradients where DDP all-reduces them, and gathers each layer's weights before its
    # matmuls. Measured over 16 steps: losses within 7e-8 relative, gradient norms within 2.1e-7, and every
    # adapter tensor within 5.4e-7 (relative Frobenius norm; per element, Adam amplifies rounding in
    # near-zero entries); on `tune init-tiny`'s 4-layer model 1.9e-7, 1.5e-6 and 2.2e-6. A single different
    # example in a global batch moves the loss by ~1e-3 relative, and a process training on its half alone,
    # or an unaveraged gradient, by far more: 1e-5 tells them apart.
    ddp, _ = ddp_run
    ours, theirs = records(out), records(ddp)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for mine, other in zip(ours, theirs):
        for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
            if key in other:
                assert mine[key] == pytest.approx(other[key], rel=1e-5), (mine["step"], key)
    expected, actual = load_file(ddp / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    assert max(relative_error(actual[key], expected[key]) for key in expected) < 1e-5


@pytest.mark.slow
def test_the_fsdp_adapter_is_a_plain_peft_adapter(two_nodes, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = two_nodes
    saved = load_file(out / "adapter_model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert len(saved) == base.config.num_hidden_layers * 7 * 2  # all-linear: 7 layers a block, A and B each
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, out)
        loaded = {name.replace(".default", ""): p for name, p in model.named_parameters() if "lora_" in name}
        assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)  # whole, not a shard
        tuned = model(ids).logits
        merged = model.merge_and_unload()(ids).logits
    assert (tuned - before).abs().max() > 1e-2  # the adapter changes the model
    assert torch.allclose(merged, tuned, atol=1e-5)  # and merges like any other (PEFT measured 2.8e-7)


@pytest.mark.slow
def test_a_killed_fsdp_run_resumes_to_the_same_adapter(two_nodes, tmp_path):
    straight, _ = two_nodes
    out = tmp_path / "out"
    command = tune_cmd("run", QUICKSTART, "--nproc", 2, *sets(f"output.dir={out}", *FSDP))
    first = kill_all_after_first_checkpoint(command, out)
    assert first.exists() and not (out / "adapter_model.safetensors").exists()

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("resuming from") == 1
    # Each process reloads its own shards of the adapter and the optimizer state, and its RNG state.
    expected, actual = load_file(straight / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert [(r["step"], r.get("loss")) for r in records(out)] == [(r["step"], r.get("loss")) for r in records(straight)]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-16"]
