"""Supervised fine-tuning (LoRA, DoRA, rsLoRA, QLoRA) through TRL's SFTTrainer.

Read top to bottom: output dir -> tokenizer and template -> data -> run records -> model -> trainer ->
adapter. The data arrives pre-tokenized with exact labels (see tune/data/instruction.py), so TRL only
pads, batches and optimizes."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tune import recipe as recipe_io
from tune.data.prepare import prepare
from tune.data.templates import resolve_template
from tune.models import load_model, load_tokenizer, lora_config, model_source
from tune.output import move_into, prepare_dir, versions, write_json, write_text
from tune.recipe import Recipe
from tune.quiet import quiet_libraries


@dataclass
class RunResult:
    summary: dict  # also written to run.json
    model: object  # the trained PeftModel, for callers (tests, pipelines) that continue in-process


def train(recipe: Recipe, recipe_path: Path, echo=print) -> RunResult:
    quiet_libraries()
    import torch
    import transformers
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from tune.train.callbacks import MetricsLog

    recipe_dir = Path(recipe_path).resolve().parent
    out_dir = prepare_dir(Path(recipe.output.dir), recipe.output.overwrite)

    # ---- tokenizer, template and data: every data problem surfaces before the model is loaded
    tokenizer = load_tokenizer(recipe.model)
    template, template_label = resolve_template(recipe.data.template, tokenizer, recipe_dir)
    data = prepare(recipe.data, tokenizer, template, recipe_dir, recipe.train.seed)
    trained_tokens = sum(sum(label != -100 for label in row["labels"]) for row in data.train)
    echo(f"data: {len(data.train)} train / {len(data.eval)} eval examples, {trained_tokens} trained tokens "
         f"per epoch, template {template_label}")
    for note in data.notes:
        echo(f"data: {note}")

    # ---- run records, written before training so a crashed run still says what it was
    if recipe.adapter.alpha is None:
        recipe.adapter.alpha = 2 * recipe.adapter.r
    write_text(out_dir / "recipe.yaml", recipe_io.dump(recipe))
    write_json(out_dir / "versions.json", versions())
    write_json(out_dir / "data_fingerprint.json", data.fingerprint)
    metrics_path = out_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)

    # ---- model
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, recipe.train.gradient_checkpointing)
    dtype = model.dtype
    on_gpu = torch.cuda.is_available()
    optimizer = recipe.train.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if on_gpu and recipe.model.quantization != "none" else "adamw_torch"
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None

    # ---- trainer
    scratch = out_dir / ".trainer"
    config = SFTConfig(
        output_dir=str(scratch),
        max_steps=recipe.train.max_steps or -1,
        num_train_epochs=recipe.train.epochs,
        learning_rate=recipe.train.learning_rate,
        lr_scheduler_type=recipe.train.lr_scheduler,
        warmup_steps=recipe.train.warmup_ratio,
        weight_decay=recipe.train.weight_decay,
        per_device_train_batch_size=recipe.train.batch_size,
        per_device_eval_batch_size=recipe.train.batch_size,
        gradient_accumulation_steps=recipe.train.gradient_accumulation,
        **_checkpointing(recipe.train.gradient_checkpointing),
        optim=optimizer,
        max_grad_norm=recipe.train.max_grad_norm,
        seed=recipe.train.seed,
        data_seed=recipe.train.seed,
        # TRL defaults to bf16 even on the CPU; mixed precision only where the GPU does it natively.
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        max_length=recipe.data.max_length,
        packing=False,
        logging_steps=recipe.train.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=recipe.train.eval_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
    )
    metrics = MetricsLog(metrics_path, echo)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.adapter),
        callbacks=[metrics],
    )
    trainer.remove_callback(PrinterCallback)  # MetricsLog prints the lines users read
    trainable, total = trainer.model.get_nb_trainable_parameters()
    echo(f"model: {model_source(recipe.model)} ({dtype}, quantization {recipe.model.quantization}), "
         f"{recipe.adapter.method} r={recipe.adapter.r}: {trainable:,} trainable of {total:,} parameters")
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    if data.eval and not evaluate_during:
        trainer.evaluate()

    # ---- adapter: staged, then renamed into place, so the dir never holds half an adapter
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(staging, safe_serialization=True)
    tokenizer.chat_template = template  # the adapter renders prompts exactly as training did
    tokenizer.save_pretrained(staging)
    losses = [r["loss"] for r in metrics.records if isinstance(r.get("loss"), float)]
    evals = [r["eval_loss"] for r in metrics.records if isinstance(r.get("eval_loss"), float)]
    summary = {
        "output_dir": str(out_dir.resolve()), "model": model_source(recipe.model), "template": template_label,
        "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
        "trainable_parameters": trainable, "total_parameters": total,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None, "device": "cuda" if on_gpu else "cpu",
    }
    write_json(staging / "run.json", summary)
    move_into(staging, out_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    return RunResult(summary, trainer.model)


def _checkpointing(enabled: bool) -> dict:
    # Passed only when on: transformers 5 warns about these (renamed in v6) whenever they are set.
    if not enabled:
        return {}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
