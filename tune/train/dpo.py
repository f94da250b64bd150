"""Preference alignment: DPO and its sibling losses (IPO, hinge, robust, ...) through TRL's DPOTrainer,
with LoRA, DoRA, rsLoRA or QLoRA, optionally continuing an SFT run's adapter (`model.adapter`).

Same shape as sft.py: output dir plan -> tokenizer, template, pairs -> model, reference and trainer ->
run records -> train (resumable) -> adapter. The pairs arrive pre-tokenized by tune/data/preference.py
with the SFT tokenization, so TRL only pads, batches and computes the preference loss.

The reference model is never a second copy of the base:
- fresh adapter: TRL gets `peft_config` and computes reference log-probs with the adapter switched off,
  i.e. the base model;
- `model.adapter`: the SFT adapter is loaded trainable and TRL adds a frozen copy of it ("ref"), so the
  reference is base + SFT adapter at its starting weights, exactly the SFT model. Merging the SFT adapter
  into the base and training a fresh one would also give that reference, but a merge into a 4-bit base
  re-rounds the weights (the reference would no longer be the SFT model) and the result would be an
  adapter on a base that exists only in memory, which `tune merge`/`export` could not rebuild."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tune import distributed
from tune import recipe as recipe_io
from tune.data.prepare import check
from tune.data.preference import prepare_pairs
from tune.data.templates import resolve_template
from tune.errors import TrainingError, TuneError
from tune.models import load_model, load_tokenizer, lora_config, model_source
from tune.output import check_writable, clear_dir, move_into, versions, write_json, write_text
from tune.paths import find_file
from tune.plots import plot_losses
from tune.quiet import quiet_libraries
from tune.recipe import Recipe
from tune.train.sft import RunResult, _check_disk, _checkpointing, _unpickling_errors

REWARD_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None) -> RunResult:
    quiet_libraries()
    import torch
    import transformers
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from tune.train.callbacks import (MetricsLog, ProgressBar, check_installed, close_tensorboard,
                                      keep_tensorboard_open, liger_kernel)
    from tune.train.checkpoints import CheckpointManifest, NonFiniteGuard, plan_run_dir

    class PretokenizedDPOTrainer(DPOTrainer):
        # TRL would re-render prompt and replies itself; the pairs already hold exactly the tokens SFT
        # trains on (same template, same prompt/reply boundary), so its dataset preparation is skipped.
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    recipe_dir = Path(recipe_path).resolve().parent
    if recipe.adapter.alpha is None:
        recipe.adapter.alpha = 2 * recipe.adapter.r
    start = _starting_adapter(recipe, recipe_dir) if recipe.model.adapter else None
    out_dir = Path(recipe.output.dir)
    checkpoints = out_dir / "checkpoints"
    distributed.setup(recipe, recipe_dir)  # several processes: as in sft.py, only rank 0 prints and writes
    main = distributed.is_main()
    echo, console = (echo, console) if main else ((lambda line: None), None)

    # ---- output dir: writable, and either fresh or an unfinished run of this same recipe
    check_installed(recipe.train)
    if "tensorboard" in recipe.train.report_to:  # transformers 5 reads the event-file folder from here only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out_dir.resolve() / "logs")
    if main:
        check_writable(out_dir)
        resume_from = plan_run_dir(out_dir, recipe.model_dump(mode="json"), resume, recipe.output.overwrite, echo)
    resume_from = distributed.share(resume_from if main else None)
    distributed.check_resume(resume_from)
    if recipe.model.trust_remote_code:
        echo("warning: model.trust_remote_code is true: Python code from the model's repository will run")

    # ---- tokenizer, template and pairs: every data problem surfaces before anything is written
    problems = check(recipe.data, recipe_dir)
    if problems:
        raise TuneError(problems)
    tokenizer = load_tokenizer(recipe.model)
    template, template_label = resolve_template(recipe.data.template, tokenizer, recipe_dir)
    data = prepare_pairs(recipe.data, tokenizer, template, recipe_dir, recipe.train.seed)
    reply_tokens = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in data.train)
    echo(f"data: {len(data.train)} train / {len(data.eval)} eval pairs, {reply_tokens} reply tokens per epoch, "
         f"template {template_label}")
    for note in data.notes:
        echo(f"data: {note}")
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=data.fingerprint)

    # ---- model, reference and trainer
    created = [p for p in (out_dir, checkpoints) if not p.exists()]
    disk = next(p for p in (out_dir.resolve(), *out_dir.resolve().parents) if p.exists())
    transformers.set_seed(recipe.train.seed)
    sharded = distributed.shards_weights(recipe, recipe_dir)
    model = load_model(recipe.model, recipe.train.gradient_checkpointing, sharded=sharded)
    dtype = model.dtype
    if start is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(start), is_trainable=True)  # TRL adds the frozen "ref" copy
    on_gpu = torch.cuda.is_available()
    optimizer = recipe.train.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if on_gpu and recipe.model.quantization != "none" and not sharded else "adamw_torch"
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    several = distributed.training_kwargs(recipe, recipe_dir, on_gpu)
    config = DPOConfig(
        output_dir=str(checkpoints),
        beta=recipe.train.beta,
        loss_type=[recipe.train.loss_type] if isinstance(recipe.train.loss_type, str) else recipe.train.loss_type,
        max_length=None,  # the pairs were already fitted to data.max_length (data.overlength)
        max_steps=recipe.train.max_steps or -1,
        num_train_epochs=recipe.train.epochs,
        learning_rate=recipe.train.learning_rate,
        lr_scheduler_type=recipe.train.lr_scheduler,
        warmup_steps=recipe.train.warmup_ratio,
        weight_decay=recipe.train.weight_decay,
        per_device_train_batch_size=recipe.train.batch_size,
        per_device_eval_batch_size=recipe.train.batch_size,
        gradient_accumulation_steps=recipe.train.gradient_accumulation,
        **_checkpointing(recipe.train.gradient_checkpointing and not several.get("fsdp")),
        optim=optimizer,
        max_grad_norm=recipe.train.max_grad_norm,
        seed=recipe.train.seed,
        data_seed=recipe.train.seed,
        bf16=on_gpu and dtype == torch.bfloat16,  # TRL defaults to bf16 even on the CPU
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,  # also what makes several CPU processes run as DDP over gloo
        use_liger_kernel=liger_kernel(recipe.train, "dpo"),
        torch_compile=recipe.train.torch_compile,
        logging_steps=recipe.train.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=recipe.train.eval_steps,
        save_strategy="steps",
        save_steps=recipe.train.save_steps,
        save_total_limit=None,  # CheckpointManifest rotates, after the new checkpoint is complete
        save_only_model=False,
        report_to=recipe.train.report_to or "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        **several,
    )
    metrics_path = out_dir / "metrics.jsonl"
    metrics = MetricsLog(metrics_path, echo)
    trainer = PretokenizedDPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        processing_class=tokenizer,
        peft_config=None if start else lora_config(recipe.adapter),
        callbacks=[metrics, CheckpointManifest(checkpoints, recipe.train.keep_checkpoints),
                   NonFiniteGuard(checkpoints)] + ([ProgressBar(console)] if console and console.is_terminal else []),
    )
    trainer.remove_callback(PrinterCallback)
    keep_tensorboard_open(trainer)
    distributed.check_trainer(trainer)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    try:
        if main:
            _check_disk(disk, trainable, recipe.train.keep_checkpoints)
    except TuneError:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    adapter_line = (f"continuing the adapter of {start} (reference: that SFT model)" if start else
                    f"{recipe.adapter.method} r={recipe.adapter.r} (reference: the base, adapter off)")
    echo(f"model: {model_source(recipe.model)} ({dtype}, quantization {recipe.model.quantization}), {adapter_line}: "
         f"{trainable:,} trainable of {total:,} parameters; dpo loss {config.loss_type}, beta {config.beta}")
    for line in distributed.describe(recipe, config):
        echo(line)

    # ---- run records, written before training so a crashed run still says what it was
    if main:
        if recipe.output.overwrite and out_dir.is_dir():
            clear_dir(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "recipe.yaml", recipe_io.dump(recipe))
        write_json(out_dir / "versions.json", versions())
        write_json(out_dir / "data_fingerprint.json", data.fingerprint)
        if resume_from is None:
            metrics_path.unlink(missing_ok=True)
            shutil.rmtree(checkpoints, ignore_errors=True)
        else:
            metrics.truncate_after(int(resume_from.name.split("-")[-1]))
            echo(f"resuming from {resume_from}")
    distributed.wait()

    # ---- train
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError:
        raise TrainingError("out of GPU memory: DPO runs chosen and rejected together, so a batch holds twice "
                            "the sequences; lower train.batch_size (raise train.gradient_accumulation), set "
                            "train.gradient_checkpointing: true, lower data.max_length, or use model.quantization: "
                            "nf4; the last complete checkpoint is kept and `tune run --resume` continues") from None
    except _unpickling_errors() as exc:
        raise TrainingError(f"{resume_from}: refused to load a checkpoint file that holds more than tensors "
                            f"({str(exc).splitlines()[0][:160]}); delete that checkpoint, or rerun with "
                            "--overwrite") from None
    seconds = time.perf_counter() - started
    peak_gpu = torch.cuda.max_memory_allocated() if on_gpu else None  # what `tune plan` estimates
    if data.eval and not evaluate_during:
        trainer.evaluate()
    close_tensorboard(trainer)

    # ---- adapter: staged, then renamed into place; only the trained adapter, never TRL's "ref" copy
    staging = out_dir / ".staging"
    if main:
        plot_losses(metrics.records, out_dir / "loss_curve.png")
        shutil.rmtree(staging, ignore_errors=True)
    distributed.save_adapter(trainer, staging, selected_adapters=["default"])
    if not main:
        return RunResult({}, trainer.model)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(staging)
    summary = _summary(recipe, metrics.records, out_dir, template_label, trainer, seconds, resume_from,
                       trainable, total, reply_tokens, on_gpu, start, peak_gpu)
    if summary["reward_accuracy"] is not None:
        echo(f"rewards: accuracy {summary['reward_accuracy']:.2f}, margin {summary['reward_margin']:.4f} "
             "(last logged training step)")
    if summary["eval_margin_tuned"] is not None:
        echo(f"held-out pairs: log p(chosen) - log p(rejected) {summary['eval_margin_reference']:+.2f} (reference) "
             f"-> {summary['eval_margin_tuned']:+.2f} (tuned), reward accuracy {summary['eval_reward_accuracy']:.2f}")
    write_json(staging / "run.json", summary)
    move_into(staging, out_dir)
    return RunResult(summary, trainer.model)


def _held_out_margins(record: dict | None, beta: float) -> dict:
    """Mean log p(chosen) - log p(rejected) on the eval pairs, for the reference and the tuned model. TRL
    logs the policy's log-probs and the reward margin beta * (policy margin - reference margin), so the
    reference's margin follows without a second pass."""
    if record is None or not isinstance(record.get("eval_logps/chosen"), float):
        return {"eval_margin_reference": None, "eval_margin_tuned": None}
    tuned = record["eval_logps/chosen"] - record["eval_logps/rejected"]
    return {"eval_margin_reference": tuned - record["eval_rewards/margins"] / beta, "eval_margin_tuned": tuned}


def _starting_adapter(recipe: Recipe, recipe_dir: Path) -> Path:
    """The `model.adapter` run dir, checked against model.name; its resolved path is what the run records."""
    from tune.export.source import read_adapter_dir

    name = recipe.model.adapter
    found = find_file(name, recipe_dir)
    if found is None or not found.is_dir():
        raise TuneError(f"model.adapter: no such folder: {name} (give the output dir of an SFT `tune run`)")
    try:
        run = read_adapter_dir(found)
    except TuneError as exc:
        raise TuneError([f"model.adapter: {problem}" for problem in exc.problems]) from None
    if run.base != model_source(recipe.model):
        raise TuneError(f"model.adapter: {found} was trained on {run.base_name}, but model.name is "
                        f"{recipe.model.name}; an adapter only fits the base it was trained on")
    recipe.model.adapter = str(found)
    return found


def _summary(recipe, records, out_dir, template_label, trainer, seconds, resume_from, trainable, total,
             reply_tokens, on_gpu, start, peak_gpu) -> dict:
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), float)]
    evals = [r["eval_loss"] for r in records if isinstance(r.get("eval_loss"), float)]
    rewarded = [r for r in records if isinstance(r.get("rewards/accuracies"), float)]
    eval_rewarded = [r for r in records if isinstance(r.get("eval_rewards/accuracies"), float)]
    return {
        "output_dir": str(out_dir.resolve()), "model": model_source(recipe.model), "template": template_label,
        "method": "dpo", "loss_type": recipe.train.loss_type, "beta": recipe.train.beta,
        "started_from_adapter": str(start) if start else None,
        "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
        "peak_gpu_memory_bytes": peak_gpu,
        "resumed_from": str(resume_from) if resume_from else None,
        "trainable_parameters": trainable, "total_parameters": total,
        # Reply tokens of both sides: the tokens whose log-probs the loss compares.
        "trained_tokens_per_second": round(reply_tokens * trainer.state.epoch / max(seconds, 1e-9), 1),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None,
        "reward_accuracy": rewarded[-1]["rewards/accuracies"] if rewarded else None,
        "reward_margin": rewarded[-1]["rewards/margins"] if rewarded else None,
        "eval_reward_accuracy": eval_rewarded[-1]["eval_rewards/accuracies"] if eval_rewarded else None,
        **_held_out_margins(eval_rewarded[-1] if eval_rewarded else None, recipe.train.beta),
        "device": "cuda" if on_gpu else "cpu", "trust_remote_code": recipe.model.trust_remote_code,
        **distributed.summary(recipe),
    }
