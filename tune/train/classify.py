"""`train.method: classify`: a sequence classifier from any base the hub's AutoModelForSequenceClassification
knows (BERT-family encoders, and decoder LMs such as Llama/Qwen/Mistral, which classify from the last
real token and so need the pad id in their config). LoRA (or QLoRA) adapts the body; the new label head
is trained fully and saved with the adapter (PEFT's SEQ_CLS task marks `classifier`/`score` as
modules_to_save; any other module the checkpoint lacked is added). Every eval writes accuracy,
macro-F1, per-class precision/recall/F1 and the confusion matrix (JSON and PNG) to the output dir.

The run follows the SFT trainer's shape: output-dir planning, checkpoints with manifests, the
non-finite guard, metrics.jsonl, loss curve, run records, and an adapter that is staged, then moved."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections import Counter
from pathlib import Path

from tune import distributed
from tune import recipe as recipe_io
from tune.errors import TrainingError, TuneError
from tune.output import check_writable, clear_dir, move_into, versions, write_json, write_text
from tune.quiet import quiet_libraries
from tune.recipe import Recipe
from tune.train.sft import RunResult, _check_disk, _checkpointing


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None) -> RunResult:
    quiet_libraries()
    import torch
    import transformers
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    from tune.classifier import LABELS_FILE, load_base
    from tune.data.classification import class_weights, encode, label_names, read_labelled
    from tune.data.prepare import check, split_off
    from tune.metrics import classification_report, report_lines, write_report
    from tune.models import load_tokenizer, lora_config, model_source
    from tune.plots import plot_losses
    from tune.train.callbacks import (MetricsLog, ProgressBar, check_installed, close_tensorboard,
                                      keep_tensorboard_open, liger_kernel)
    from tune.train.checkpoints import CheckpointManifest, NonFiniteGuard, plan_run_dir

    data = recipe.data
    if data.format != "classification":
        raise TuneError(f"train.method: classify needs data.format: classification, not {data.format}")
    if data.packing:
        raise TuneError("data.packing: a classifier sees one example per row; set data.packing: false")
    recipe_dir = Path(recipe_path).resolve().parent
    if recipe.adapter.alpha is None:
        recipe.adapter.alpha = 2 * recipe.adapter.r
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

    # ---- labels and data: every data problem surfaces before the model is loaded
    problems = check(data, recipe_dir)
    if problems:
        raise TuneError(problems)
    tokenizer = load_tokenizer(recipe.model)
    fingerprint = {"sources": []}
    train_rows = read_labelled(data, data.train, "data.train", recipe_dir, recipe.train.seed, fingerprint)
    if data.eval is not None:
        eval_rows = read_labelled(data, data.eval, "data.eval", recipe_dir, recipe.train.seed, fingerprint)
    else:
        train_rows, eval_rows = split_off(train_rows, data.eval_fraction, recipe.train.seed)
    names = label_names(data.labels, [label for *_, label in train_rows])
    if len(names) < 2:
        raise TuneError(f"data.train: every row has the label '{names[0]}'; a classifier needs at least two labels")
    label2id = {name: i for i, name in enumerate(names)}
    train_set = encode(train_rows, tokenizer, data.max_length, label2id)
    eval_set = encode(eval_rows, tokenizer, data.max_length, label2id)
    weights = class_weights(recipe.train.class_weights, names, [row["labels"] for row in train_set])
    counts = Counter(row["labels"] for row in train_set)
    input_tokens = sum(len(row["input_ids"]) for row in train_set)
    fingerprint |= {"labels": names, "train_examples": len(train_set), "eval_examples": len(eval_set),
                    "tokens_sha256": _sha(repr([(r["input_ids"], r["labels"]) for r in train_set + eval_set]))}
    echo(f"data: {len(train_set)} train / {len(eval_set)} eval examples, labels "
         + ", ".join(f"{name} {counts[i]}" for i, name in enumerate(names))
         + (f"; class weights {', '.join(f'{w:.3g}' for w in weights)}" if weights else ""))
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=fingerprint)

    # ---- model and trainer (the Trainer creates its checkpoint folder; undone if a check below fails)
    created = [p for p in (out_dir, checkpoints) if not p.exists()]
    disk = next(p for p in (out_dir.resolve(), *out_dir.resolve().parents) if p.exists())
    transformers.set_seed(recipe.train.seed)
    base, new_modules = load_base(recipe.model, names, tokenizer, recipe.train.gradient_checkpointing)
    dtype = base.dtype
    # SEQ_CLS makes PEFT train and save the head; modules the checkpoint lacked are trained fully too
    saved = sorted(set(recipe.adapter.modules_to_save) | set(new_modules)) or None
    peft_config = dataclasses.replace(lora_config(recipe.adapter), task_type="SEQ_CLS", modules_to_save=saved)
    model = get_peft_model(base, peft_config)
    on_gpu = torch.cuda.is_available()
    optimizer = recipe.train.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if on_gpu and recipe.model.quantization != "none" else "adamw_torch"
    evaluate_during = bool(eval_set) and recipe.train.eval_steps is not None
    several = distributed.training_kwargs(recipe, recipe_dir, on_gpu)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=recipe.train.max_steps or -1,
        num_train_epochs=recipe.train.epochs,
        learning_rate=recipe.train.learning_rate,
        lr_scheduler_type=recipe.train.lr_scheduler,
        warmup_steps=recipe.train.warmup_ratio,
        weight_decay=recipe.train.weight_decay,
        per_device_train_batch_size=recipe.train.batch_size,
        per_device_eval_batch_size=max(recipe.train.batch_size, 32),  # no backward pass: wider batches fit
        gradient_accumulation_steps=recipe.train.gradient_accumulation,
        **_checkpointing(recipe.train.gradient_checkpointing and not several.get("fsdp")),
        optim=optimizer,
        max_grad_norm=recipe.train.max_grad_norm,
        seed=recipe.train.seed,
        data_seed=recipe.train.seed,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,  # also what makes several CPU processes run as DDP over gloo
        # Length-grouped batches cut the padding computed; lengths vary a lot in review-like data.
        train_sampling_strategy="group_by_length" if data.group_by_length else "random",
        use_liger_kernel=liger_kernel(recipe.train, "classify"),
        torch_compile=recipe.train.torch_compile,
        remove_unused_columns=False,  # rows hold only model inputs; PEFT's forward signature hides token_type_ids
        label_names=["labels"],
        logging_steps=recipe.train.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # the default hides a NaN loss behind the running average
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
    reports: list[dict] = []

    def compute_metrics(prediction) -> dict:
        # Called once per eval with the whole eval split; writes the full report beside the run records.
        report = classification_report(prediction.label_ids, prediction.predictions.argmax(axis=-1), names)
        if main:  # every process gets the gathered predictions; one writes
            write_report(report, out_dir, step=trainer.state.global_step)
        reports.append(report)
        echo(f"eval: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    trainer = WeightedTrainer(
        weights, model=model, args=args, train_dataset=Dataset.from_list(train_set),
        eval_dataset=Dataset.from_list(eval_set) if eval_set else None, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
        callbacks=[metrics, CheckpointManifest(checkpoints, recipe.train.keep_checkpoints),
                   NonFiniteGuard(checkpoints)] + ([ProgressBar(console)] if console and console.is_terminal else []),
    )
    trainer.remove_callback(PrinterCallback)  # MetricsLog prints the lines users read
    keep_tensorboard_open(trainer)
    distributed.check_trainer(trainer)
    trainable, total = model.get_nb_trainable_parameters()
    try:
        if main:
            _check_disk(disk, trainable, recipe.train.keep_checkpoints)
    except TuneError:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    echo(f"model: {model_source(recipe.model)} ({dtype}, quantization {recipe.model.quantization}) as a "
         f"{len(names)}-label classifier, {recipe.adapter.method} r={recipe.adapter.r} + head "
         f"({', '.join(sorted(_saved_modules(model)))}): {trainable:,} trainable of {total:,} parameters")
    for line in distributed.describe(recipe, args):
        echo(line)

    # ---- run records, written before training so a crashed run still says what it was
    if main:
        if recipe.output.overwrite and out_dir.is_dir():
            clear_dir(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "recipe.yaml", recipe_io.dump(recipe))
        write_json(out_dir / "versions.json", versions())
        write_json(out_dir / "data_fingerprint.json", fingerprint)
        if resume_from is None:
            metrics_path.unlink(missing_ok=True)
            shutil.rmtree(checkpoints, ignore_errors=True)
        else:
            metrics.truncate_after(int(resume_from.name.split("-")[-1]))
            echo(f"resuming from {resume_from}")
    distributed.wait()

    # ---- train, then make sure the last report describes the final weights
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError:
        raise TrainingError("out of GPU memory: lower train.batch_size (raise train.gradient_accumulation "
                            "to keep the effective batch), lower data.max_length, or load the base in 4-bit "
                            "(model.quantization: nf4); `tune run --resume` continues") from None
    seconds = time.perf_counter() - started
    peak_gpu = torch.cuda.max_memory_allocated() if on_gpu else None  # what `tune plan` estimates
    if eval_set and (not evaluate_during or trainer.state.global_step % recipe.train.eval_steps):
        trainer.evaluate()
    close_tensorboard(trainer)
    if main:
        plot_losses(metrics.records, out_dir / "loss_curve.png")
    if reports:
        for line in report_lines(reports[-1]):
            echo(line)

    # ---- adapter + head, tokenizer, labels and the labelled config: staged, then moved into place
    staging = out_dir / ".staging"
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    distributed.save_adapter(trainer, staging)
    if not main:
        return RunResult({}, model)
    tokenizer.save_pretrained(staging)
    model.get_base_model().config.save_pretrained(staging)  # id2label, label2id, num_labels, pad_token_id
    write_json(staging / LABELS_FILE, {"labels": names, "id2label": dict(enumerate(names)),
                                       "label2id": label2id, "class_weights": weights})
    losses = [r["loss"] for r in metrics.records if isinstance(r.get("loss"), float)]
    evals = [r["eval_loss"] for r in metrics.records if isinstance(r.get("eval_loss"), float)]
    final = reports[-1] if reports else {}
    summary = {
        "output_dir": str(out_dir.resolve()), "model": model_source(recipe.model), "method": "classify",
        "labels": names, "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
        "peak_gpu_memory_bytes": peak_gpu,
        "resumed_from": str(resume_from) if resume_from else None,
        "trainable_parameters": trainable, "total_parameters": total,
        "trained_tokens_per_second": round(input_tokens * trainer.state.epoch / max(seconds, 1e-9), 1),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None, "accuracy": final.get("accuracy"),
        "macro_f1": final.get("macro_f1"), "device": "cuda" if on_gpu else "cpu",
        "trust_remote_code": recipe.model.trust_remote_code, **distributed.summary(recipe),
    }
    write_json(staging / "run.json", summary)
    move_into(staging, out_dir)
    return RunResult(summary, model)


def _weighted_trainer_class():
    from transformers import Trainer

    class WeightedTrainer(Trainer):
        """Cross-entropy with optional per-label weights, computed here for every architecture alike."""

        def __init__(self, weights, **kwargs):
            super().__init__(**kwargs)
            self.label_weights = weights
            self.model_accepts_loss_kwargs = False  # our loss is a batch mean: let the Trainer scale accumulation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            labels = inputs["labels"]
            outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
            logits = outputs.logits.float()
            weight = torch.tensor(self.label_weights, device=logits.device) if self.label_weights else None
            loss = torch.nn.functional.cross_entropy(logits, labels, weight=weight)
            return (loss, outputs) if return_outputs else loss

    return WeightedTrainer


def WeightedTrainer(weights, **kwargs):  # noqa: N802  (a class built on first use keeps transformers' import lazy)
    return _weighted_trainer_class()(weights, **kwargs)


def _saved_modules(model) -> set[str]:
    from peft.utils import ModulesToSaveWrapper

    return {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, ModulesToSaveWrapper)}


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
