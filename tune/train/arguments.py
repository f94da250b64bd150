"""The TrainingArguments keys every method shares, resolved from the recipe once: schedule, batch,
checkpointing, the optimizer choice, precision, logging, the save and eval cadence and the distributed
options. A method adds its own keys and passes them all to its config class."""

from __future__ import annotations

from tune.models.load import cpu_has_bf16
from tune.recipe import Recipe
from tune.train import distributed


def arguments(run, dtype, evaluate_during: bool, epochs: float | None = None) -> dict:
    """The TrainingArguments keys every method shares; a method adds its own and passes them all to its
    config class (SFTConfig, DPOConfig, TrainingArguments, ...). `epochs`: what train.epochs: auto came to."""
    from tune.train.callbacks import liger_kernel

    train = run.recipe.train
    several = distributed.training_kwargs(run.recipe, run.recipe_dir, run.on_gpu)
    precision = run.precision = mixed_precision(run.recipe, dtype, run.on_gpu)
    return dict(
        output_dir=str(run.checkpoints),
        max_steps=train.max_steps or -1,
        num_train_epochs=epochs or train.epochs,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation,
        **checkpointing(train.gradient_checkpointing and not several.get("fsdp")),  # FSDP checkpoints itself
        optim=optimizer(run.recipe, run.on_gpu, run.sharded),
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        bf16=precision.startswith("bf16"),
        fp16=precision == "fp16",
        use_cpu=not run.on_gpu,  # also what makes several CPU processes run as DDP over gloo
        use_liger_kernel=liger_kernel(train, run.recipe.train.method),
        torch_compile=train.torch_compile,
        neftune_noise_alpha=train.neftune_alpha,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # the default hides a NaN loss behind the running average
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=None,  # CheckpointManifest rotates, after the new checkpoint is complete
        save_only_model=False,
        report_to=train.report_to or "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=run.on_gpu,
        **several,
    )


def optimizer(recipe: Recipe, on_gpu: bool, sharded: bool) -> str:
    """train.optimizer resolved. auto: paged 8-bit AdamW for a quantized base on a GPU, unless FSDP or
    ZeRO-3 shard the optimizer states themselves (paged 8-bit states break their checkpoints)."""
    if recipe.train.optimizer != "auto":
        return recipe.train.optimizer
    return "paged_adamw_8bit" if on_gpu and recipe.model.quantization != "none" and not sharded else "adamw_torch"


def mixed_precision(recipe: Recipe, dtype, on_gpu: bool) -> str:
    """bf16 / fp16 on a GPU as the weights are; on a CPU with AVX512-BF16 (and model.dtype auto), bf16
    autocast, whose matmuls run much faster than float32; else float32. TRL defaults to bf16 even on a
    CPU without it, so this is always explicit."""
    import torch

    if on_gpu:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "float32")
    if recipe.model.dtype == "auto" and cpu_has_bf16():
        return "bf16-autocast"
    return "float32"


def checkpointing(enabled: bool) -> dict:
    # Always explicit: TRL's configs turn checkpointing on by default, which slows every small run.
    if not enabled:
        return {"gradient_checkpointing": False}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
