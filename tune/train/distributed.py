"""Several processes on one recipe, inside each process: which one writes (global rank 0), the checks that
must pass before anything runs, and the recipe's `distributed` section mapped onto the TrainingArguments
fields that transformers and accelerate already implement (ddp_*, fsdp/fsdp_config, deepspeed).

Every process loads the same recipe, reads the same data and seeds the same way; accelerate's sampler
then hands process i the batches i, i+N, ... of one seeded order, so a step's global batch is
batch_size x gradient_accumulation x N examples. Only rank 0 prints and writes (records, metrics, plots,
adapter); the others only train. torch is imported inside the functions: `tune validate` imports this.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tune.errors import TuneError
from tune.paths import find_regular_file

EXTRA = "pip install 'tune-peft[deepspeed]'"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The process that prints and writes: global rank 0 (every process of a single-process run)."""
    return rank() == 0


# ---------------------------------------------------------------------------------------------
# Checks: the recipe's own (tune validate) and the host's (before launching, and in every process)


def check(recipe, recipe_dir: Path | None) -> list[str]:
    """Problems with the recipe's `distributed` section that need the file system (its DeepSpeed file, the
    base's config)."""
    section = recipe.distributed
    if section.strategy == "fsdp" and recipe.train.method == "classify" and _model_type(recipe) == "bert":
        # Measured (torch 2.13, transformers 5.25, PEFT 0.21): fully_shard of all-MiniLM-L6-v2 with its trained
        # head stops at "Invariant encountered: value was None"; classify on a decoder base (Llama) shards.
        return ["distributed.strategy: fsdp cannot shard a BERT encoder for train.method: classify here (torch's "
                "fully_shard fails on it); use ddp, which holds a 22M-110M encoder easily"]
    if section.strategy != "deepspeed" or section.deepspeed_config is None:
        return []
    found = find_regular_file(section.deepspeed_config, recipe_dir)
    if found is None:
        return [f"distributed.deepspeed_config: no such file: {section.deepspeed_config}"]
    try:
        config = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"distributed.deepspeed_config: {found} is not a JSON file ({str(exc).splitlines()[0][:120]})"]
    stage = config.get("zero_optimization", {}).get("stage", 0) if isinstance(config, dict) else None
    if stage not in (0, 1, 2, 3):
        return [f"distributed.deepspeed_config: {found} needs a zero_optimization.stage of 0-3, not {stage!r}"]
    return []


def _model_type(recipe) -> str | None:
    """config.json's model_type of a local base (None for a hub id not downloaded yet)."""
    from tune.models.resolve import resolve_model

    try:
        config = Path(resolve_model(recipe.model.name)) / "config.json"
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
    except (TuneError, OSError, ValueError):
        return None


def requirements(recipe, gpus: int, nproc: int | None = None) -> list[str]:
    """What this host must have for the strategy: DeepSpeed installed, GPUs for DeepSpeed and for what only
    GPUs do (FSDP1, offloading to CPU RAM, nccl), enough GPUs. FSDP2 itself also runs on the CPU (gloo)."""
    import importlib.util

    section = recipe.distributed
    if section.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        return [f"distributed.strategy: deepspeed needs the deepspeed package: {EXTRA}"]
    if section.strategy == "fsdp" and section.fsdp_offload and gpus == 0:
        return ["distributed.fsdp_offload: moves shards from GPU memory to CPU RAM, where a CPU run keeps them "
                "anyway; set it false on the CPU"]
    if section.strategy == "deepspeed" and gpus == 0:
        # Measured with DeepSpeed 0.19.8: its CPU accelerator trains ZeRO-2/3 over gloo, but first compiles its
        # shared-memory op with ninja and a C++ compiler (none: "Unable to JIT load the deepspeed_shm_comm op").
        return ["distributed.strategy: deepspeed is run on GPUs only (on the CPU it compiles its own C++ op and is "
                "not tested; docs/multi-gpu.md); on the CPU use fsdp or ddp"]
    if section.strategy == "fsdp" and section.fsdp_version == 1 and gpus == 0:
        # accelerate refuses FSDP1's sync_module_states on a CPU, and without it torch's FlatParameter wrapper
        # stops at "Inconsistent compute device and `device_id`: cpu vs cpu:0" (torch 2.13, accelerate 1.15).
        return ["distributed.fsdp_version: 1 (the FlatParameter wrapper) runs on GPUs only; on the CPU use "
                "fsdp_version: 2"]
    if section.backend == "nccl" and gpus == 0:
        return ["distributed.backend: nccl needs GPUs; use auto (gloo on the CPU)"]
    if nproc is not None and gpus and nproc > gpus:
        return [f"--nproc {nproc}: this host has {gpus} GPU{'s' if gpus > 1 else ''}; one process per GPU"]
    return []


def _launcher_strategy() -> str | None:
    """What an `accelerate launch --config_file ...` asked for through its environment."""
    flag = lambda name: os.environ.get(name, "false").lower() in ("1", "true", "yes")  # noqa: E731
    return "fsdp" if flag("ACCELERATE_USE_FSDP") else "deepspeed" if flag("ACCELERATE_USE_DEEPSPEED") else None


# ---------------------------------------------------------------------------------------------
# Inside each process


def setup(recipe, recipe_dir: Path) -> None:
    """First thing a trainer does: refuse what cannot run, then start the process group (and pin this
    process to its GPU) so the checks and barriers below work. Nothing happens in a single process."""
    if world_size() == 1:
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = check(recipe, recipe_dir) + requirements(recipe, gpus)
    wanted = _launcher_strategy()
    if wanted and wanted != recipe.distributed.strategy:
        problems.append(f"distributed.strategy: the launcher's accelerate config asks for {wanted} but the recipe "
                        f"says {recipe.distributed.strategy}; set distributed.strategy: {wanted} (its options live "
                        "in the recipe) or launch without that config")
    if problems:
        raise TuneError(problems)
    if recipe.distributed.strategy == "fsdp":
        # What `accelerate launch` exports for FSDP; transformers reads it while loading the model, before
        # the Trainer (which would set it) exists: with it, only rank 0 reads the checkpoint.
        os.environ["ACCELERATE_USE_FSDP"] = "true"
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = str(recipe.distributed.fsdp_cpu_ram_efficient_loading).lower()
        if not gpus:
            from tune.train.sharded import shard_on_cpu

            shard_on_cpu()
    from accelerate import PartialState

    PartialState(cpu=not gpus, backend=backend(recipe.distributed, bool(gpus)))


def backend(section, on_gpu: bool) -> str:
    return section.backend if section.backend != "auto" else "nccl" if on_gpu else "gloo"


def training_kwargs(recipe, recipe_dir: Path, on_gpu: bool) -> dict:
    """TrainingArguments fields for the recipe's strategy; empty for a single process."""
    if world_size() == 1:
        return {}
    section = recipe.distributed
    kwargs = {"ddp_backend": backend(section, on_gpu), "ddp_find_unused_parameters": section.find_unused_parameters}
    if section.strategy == "fsdp":
        kwargs.update(fsdp=True, fsdp_config=fsdp_config(section))
        # FSDP's own activation checkpointing: the Trainer's would all-gather each layer a second time in backward.
        kwargs["fsdp_config"]["activation_checkpointing"] = recipe.train.gradient_checkpointing
    elif section.strategy == "deepspeed":
        kwargs["deepspeed"] = (str(find_regular_file(section.deepspeed_config, recipe_dir)) if section.deepspeed_config
                               else deepspeed_config(section))
    return kwargs


def fsdp_config(section) -> dict:
    """transformers' fsdp_config keys (TrainingArguments docs), following PEFT's FSDP(-QLoRA) guide."""
    config = {
        "version": section.fsdp_version,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer (the model's _no_split_modules)
        "cpu_offload": section.fsdp_offload,
        "cpu_ram_efficient_loading": section.fsdp_cpu_ram_efficient_loading,
        # Checkpoints hold each process's shard (no gather of a 70B base every save_steps); the final adapter
        # is gathered once in full by sharded.save_adapter().
        "state_dict_type": "SHARDED_STATE_DICT",
    }
    if section.fsdp_version == 2:
        config["reshard_after_forward"] = section.fsdp_sharding == "full_shard"
    else:  # FlatParameters: keep frozen and trainable tensors apart, which PEFT's memory savings need
        config.update(reshard_after_forward=section.fsdp_sharding.upper(), use_orig_params=False,
                      sync_module_states=True)
    return config


def deepspeed_config(section) -> dict:
    """A ZeRO config whose "auto" values transformers fills from the TrainingArguments (batch, accumulation,
    clipping, precision, learning rate), so the recipe stays the one place they are set."""
    zero = {"stage": section.zero_stage, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto"}
    if section.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)  # sharded.save_adapter() gathers it
    config = {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
              "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    if section.zero_offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's own Adam, so it is named here.
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
    if section.zero_offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return config


def zero_stage(recipe, recipe_dir: Path | None) -> int:
    section = recipe.distributed
    if section.deepspeed_config is None:
        return section.zero_stage
    found = find_regular_file(section.deepspeed_config, recipe_dir)
    return json.loads(found.read_text())["zero_optimization"]["stage"] if found else section.zero_stage


def shards_weights(recipe, recipe_dir: Path | None) -> bool:
    """FSDP and ZeRO-3 split the frozen base too: a 4-bit base must then be stored in a float dtype."""
    if world_size() == 1:
        return False
    strategy = recipe.distributed.strategy
    return strategy == "fsdp" or (strategy == "deepspeed" and zero_stage(recipe, recipe_dir) == 3)


def describe(recipe, config) -> list[str]:
    """The line a run prints about its processes and how its global batch is formed."""
    strategy, count = recipe.distributed.strategy, world_size()
    if count == 1:
        return [] if strategy == "ddp" else [f"note: a single process, so distributed.strategy: {strategy} does not "
                                             "apply; launch several with `tune run --nproc N`"]
    section = recipe.distributed
    how = {"ddp": "DDP, a full copy each",
           "fsdp": f"FSDP{section.fsdp_version} {section.fsdp_sharding}" + (", offloaded to CPU" if section.fsdp_offload else ""),
           "deepspeed": f"DeepSpeed {section.deepspeed_config or f'ZeRO-{section.zero_stage}'}"}[strategy]
    per, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    return [f"distributed: {count} processes ({how}, {config.ddp_backend}); global batch = {per} per device x "
            f"{accumulation} accumulation x {count} processes = {per * accumulation * count} rows per step"]


def summary(recipe) -> dict:
    """What run.json records about the processes."""
    return {"processes": world_size(), "distributed": recipe.distributed.strategy if world_size() > 1 else None}


def share(value):
    """Rank 0's value on every process (e.g. the checkpoint it chose to resume from)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wait() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """Every process leaves together with its process group torn down. Exiting with the group alive let
    gloo's threads abort one process of a finished CI run ('terminate called without an active
    exception', exit 1) while rank 0 was still writing."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def agree(**facts) -> None:
    """Stop when the processes hold different recipes, data or seeds (a node with other files, say):
    each fact's sha256 is gathered and compared with rank 0's."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    digests = {name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
               for name, value in facts.items()}
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, digests)
    for name in facts:
        odd = [index for index, other in enumerate(gathered) if other[name] != gathered[0][name]]
        if odd:
            raise TuneError(f"distributed: process {odd[0]} has a different {name} than process 0; every process "
                            "(and node) needs the same recipe, data files and seed")


def check_resume(checkpoint: Path | None, processes: int | None = None) -> None:
    """A checkpoint resumes only with the process count that wrote it: the data order, the global batch
    and the per-process RNG states depend on it."""
    if checkpoint is None:
        return
    processes = processes or world_size()
    written = len(list(checkpoint.glob("rng_state_*.pth"))) or 1
    if written != processes:
        how = f"--nproc {written}" if written > 1 else "a single process (no --nproc)"
        raise TuneError(f"--resume: {checkpoint} was written by {written} process{'es' if written > 1 else ''} and "
                        f"this run has {processes}; resume with {how}")


def check_trainer(trainer) -> None:
    """The Trainer must see every process (e.g. TrainingArguments without use_cpu on a CPU host would train
    each process alone on all the data), and shard when the recipe says fsdp."""
    if world_size() > 1 and trainer.accelerator.num_processes != world_size():
        raise TuneError(f"distributed: the trainer sees {trainer.accelerator.num_processes} of {world_size()} processes")
    if trainer.args.fsdp_plugin_args is not None and not trainer.is_fsdp_enabled:
        raise TuneError("distributed.strategy: fsdp was asked for but the trainer did not enable it (a changed "
                        "accelerate?); it would train a full copy per process. Use ddp, or report this")
