"""Supervised fine-tuning (LoRA, DoRA, rsLoRA, QLoRA) through TRL's SFTTrainer.

Read top to bottom: output dir plan -> tokenizer, template, data -> model and trainer -> run records
-> train (resuming from the last complete checkpoint) -> adapter. Everything that can be wrong with
the input is found before the first file is written. The data arrives pre-tokenized with exact labels
(tune/data/instruction.py), so TRL only pads, batches and optimizes."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tune import distributed, probes
from tune import recipe as recipe_io
from tune.data.replay import make_replay
from tune.data.prepare import check, prepare
from tune.data.templates import resolve_template
from tune.errors import TrainingError, TuneError
from tune.models import load_model, load_tokenizer, lora_config, model_source
from tune.plots import plot_losses
from tune.answer_cache import base_answerer
from tune.generate import generate_batch
from tune.probes import load_probe_sets
from tune.output import check_writable, clear_dir, move_into, versions, write_json, write_text
from tune.quiet import quiet_libraries
from tune.recipe import Recipe


@dataclass
class RunResult:
    summary: dict  # also written to run.json
    model: object  # the trained PeftModel, for callers (tests, pipelines) that continue in-process


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None) -> RunResult:
    """`console`: a rich Console that is a terminal gets a live progress bar with ETA."""
    quiet_libraries()
    import torch
    import transformers
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from tune.train.callbacks import (MetricsLog, ProgressBar, check_installed, close_tensorboard,
                                      keep_tensorboard_open, liger_kernel)
    from tune.train.checkpoints import CheckpointManifest, NonFiniteGuard, plan_run_dir

    recipe_dir = Path(recipe_path).resolve().parent
    if recipe.adapter.alpha is None:
        recipe.adapter.alpha = 2 * recipe.adapter.r
    out_dir = Path(recipe.output.dir)
    checkpoints = out_dir / "checkpoints"
    distributed.setup(recipe, recipe_dir)  # several processes: their checks and process group come first
    main = distributed.is_main()  # only rank 0 prints and writes; the other processes only train
    echo, console = (echo, console) if main else ((lambda line: None), None)

    # ---- output dir: writable, and either fresh or an unfinished run of this same recipe
    check_installed(recipe.train)
    if "tensorboard" in recipe.train.report_to:  # transformers 5 reads the event-file folder from here only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out_dir.resolve() / "logs")
    if main:
        check_writable(out_dir)
        resume_from = plan_run_dir(out_dir, recipe.model_dump(mode="json"), resume, recipe.output.overwrite, echo)
    resume_from = distributed.share(resume_from if main else None)  # every process resumes where rank 0 chose
    distributed.check_resume(resume_from)
    if recipe.model.trust_remote_code:
        echo("warning: model.trust_remote_code is true: Python code from the model's repository will run")

    # ---- tokenizer, template and data: every data problem surfaces before anything is written
    problems = check(recipe.data, recipe_dir)  # missing files and bad first rows, before slow loads
    if problems:
        raise TuneError(problems)
    probe_sets = load_probe_sets(recipe.data.probes, recipe_dir)
    tokenizer = load_tokenizer(recipe.model)
    template, template_label = resolve_template(recipe.data.template, tokenizer, recipe_dir)
    tokenizer.chat_template = template  # probes, replay and the saved adapter render prompts as training does
    data = prepare(recipe.data, tokenizer, template, recipe_dir, recipe.train.seed)

    # ---- model and trainer (the Trainer creates its checkpoint folder; undone if a check below fails)
    created = [p for p in (out_dir, checkpoints) if not p.exists()]
    disk = next(p for p in (out_dir.resolve(), *out_dir.resolve().parents) if p.exists())
    transformers.set_seed(recipe.train.seed)
    sharded = distributed.shards_weights(recipe, recipe_dir)
    model = load_model(recipe.model, recipe.train.gradient_checkpointing, sharded=sharded)
    dtype = model.dtype
    # ---- what the base model says before training: probe answers, and replay rows (which join the data)
    base_answer = base_answerer(model, tokenizer, recipe, template)
    base_answers = _probe(base_answer, probe_sets, recipe, echo, "base model") if probe_sets else []
    if recipe.data.replay:
        replay = make_replay(base_answer, tokenizer, template, recipe.data, data.train, recipe_dir,
                             recipe.train.seed, data.report)
        data.train += replay.examples
        data.fingerprint["replay"] = replay.fingerprint
        data.notes.append(replay.note)
    trained_tokens = sum(sum(label != -100 for label in row["labels"]) for row in data.train)
    echo(f"data: {len(data.train)} train / {len(data.eval)} eval examples, {trained_tokens} trained tokens "
         f"per epoch, template {template_label}")
    for note in data.notes:
        echo(f"data: {note}")
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=data.fingerprint)  # same seed, rows and order
    on_gpu = torch.cuda.is_available()
    optimizer = recipe.train.optimizer
    if optimizer == "auto":  # FSDP and ZeRO-3 shard optimizer states themselves; paged 8-bit ones break their saves
        optimizer = "paged_adamw_8bit" if on_gpu and recipe.model.quantization != "none" and not sharded else "adamw_torch"
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    several = distributed.training_kwargs(recipe, recipe_dir, on_gpu)  # FSDP checkpoints activations itself
    cpu_autocast = not on_gpu and recipe.model.dtype == "auto" and torch.cpu._is_avx512_bf16_supported()
    config = SFTConfig(
        output_dir=str(checkpoints),
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
        # TRL defaults to bf16 even on the CPU. Mixed precision where the hardware does bf16 natively: a GPU,
        # or (dtype auto) a CPU with AVX512-BF16, where autocast matmuls run much faster than float32.
        bf16=(on_gpu and dtype == torch.bfloat16) or cpu_autocast,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        max_length=recipe.data.max_length,
        # BFD packing is padding-free: rows are flattened with per-example position_ids, from which
        # transformers builds a block-diagonal mask (SDPA/eager) or cu_seq_lens (FlashAttention), and the
        # pre-computed labels travel with their tokens, so completion-only loss survives per example.
        packing=recipe.data.packing,
        packing_strategy="bfd",  # not "wrapped": that one cuts examples and lets them attend to each other
        padding_free=recipe.data.packing,
        # Length-grouped batches cut the padding computed when rows are not packed.
        train_sampling_strategy="group_by_length" if recipe.data.group_by_length and not recipe.data.packing else "random",
        use_liger_kernel=liger_kernel(recipe.train, "sft"),
        torch_compile=recipe.train.torch_compile,
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
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.adapter),
        callbacks=[metrics, CheckpointManifest(checkpoints, recipe.train.keep_checkpoints),
                   NonFiniteGuard(checkpoints)] + ([ProgressBar(console)] if console and console.is_terminal else []),
    )
    trainer.remove_callback(PrinterCallback)  # MetricsLog prints the lines users read
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
    echo(f"model: {model_source(recipe.model)} ({dtype}, quantization {recipe.model.quantization}), "
         f"{recipe.adapter.method} r={recipe.adapter.r}: {trainable:,} trainable of {total:,} parameters")
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
    distributed.wait()  # the dir is ready before any process saves into it

    # ---- train
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError:
        raise TrainingError("out of GPU memory: lower train.batch_size (raise train.gradient_accumulation "
                            "to keep the effective batch), set train.gradient_checkpointing: true, lower "
                            "data.max_length, or load the base in 4-bit (model.quantization: nf4); "
                            "the last complete checkpoint is kept and `tune run --resume` continues") from None
    except _unpickling_errors() as exc:
        raise TrainingError(f"{resume_from}: refused to load a checkpoint file that holds more than tensors "
                            f"({str(exc).splitlines()[0][:160]}); delete that checkpoint, or rerun with "
                            "--overwrite") from None
    seconds = time.perf_counter() - started
    peak_gpu = torch.cuda.max_memory_allocated() if on_gpu else None  # what `tune plan` estimates
    if data.eval and not evaluate_during:
        trainer.evaluate()
    close_tensorboard(trainer)

    # ---- adapter: staged, then renamed into place, so the dir never holds half an adapter
    staging = out_dir / ".staging"
    if main:
        plot_losses(metrics.records, out_dir / "loss_curve.png")
        shutil.rmtree(staging, ignore_errors=True)
    distributed.save_adapter(trainer, staging)  # rank 0 writes; under FSDP/ZeRO-3 all help gather it first
    if not main:
        return RunResult({}, trainer.model)
    tokenizer.save_pretrained(staging)
    if recipe.data.replay:
        write_text(staging / "replay.jsonl", "".join(json.dumps(row) + "\n" for row in replay.rows))
    probe_shares = None
    if probe_sets:
        tuned_answers = _probe(lambda conversations, limit: generate_batch(trainer.model, tokenizer, conversations, limit),
                               probe_sets, recipe, echo, "tuned model")
        probe_rows, probe_shares = probes.score(probe_sets, base_answers, tuned_answers)
        write_text(staging / "probes.md", probes.markdown(probe_rows, probe_shares))
        write_json(staging / "probes.json", {"shares": probe_shares, "rows": probe_rows})
        for probe_set in probe_sets:
            echo(f"\nprobes {probe_set.name} (first mark: tuned right, second: base right):")
            for line in probes.table_lines(probe_rows, probe_set.name, limit=8):
                echo(line)
        echo("")
        for line in probes.summary_lines(probe_shares):
            echo(line)
    losses = [r["loss"] for r in metrics.records if isinstance(r.get("loss"), float)]
    evals = [r["eval_loss"] for r in metrics.records if isinstance(r.get("eval_loss"), float)]
    summary = {
        "output_dir": str(out_dir.resolve()), "model": model_source(recipe.model), "template": template_label,
        "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
        "peak_gpu_memory_bytes": peak_gpu,
        "resumed_from": str(resume_from) if resume_from else None,
        "trainable_parameters": trainable, "total_parameters": total,
        "trained_tokens_per_second": round(trained_tokens * trainer.state.epoch / max(seconds, 1e-9), 1),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None, "device": "cuda" if on_gpu else "cpu",
        "trust_remote_code": recipe.model.trust_remote_code, "probes": probe_shares, **distributed.summary(recipe),
    }
    write_json(staging / "run.json", summary)
    move_into(staging, out_dir)
    return RunResult(summary, trainer.model)


def _probe(answer, probe_sets, recipe: Recipe, echo, who: str) -> list[list[str]]:
    started = time.perf_counter()
    answers = probes.answer_sets(answer, probe_sets, recipe.data.system_prompt, recipe.data.probe_max_new_tokens)
    echo(f"probes: the {who} answered {sum(len(s.questions) for s in probe_sets)} questions in "
         f"{time.perf_counter() - started:.0f} s")
    return answers


def _checkpointing(enabled: bool) -> dict:
    # Always explicit: TRL's SFTConfig turns checkpointing on by default, which slows every small run.
    if not enabled:
        return {"gradient_checkpointing": False}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}


def _check_disk(probe: Path, trainable: int, keep: int) -> None:
    """Checkpoints hold the adapter and two AdamW moments in float32; refuse a run that cannot fit them."""
    needed = trainable * 4 * 3 * (keep + 1) + trainable * 4 + (64 << 20)
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise TuneError(f"output.dir: {probe} has {free / 2**20:.0f} MiB free but checkpoints need about "
                        f"{needed / 2**20:.0f} MiB; free space, lower train.keep_checkpoints, or choose "
                        "another output.dir")


def _unpickling_errors() -> tuple:
    import pickle

    return (pickle.UnpicklingError,)
