"""The skeleton every method runs on, once: a method module (sft.py, dpo.py, classify.py, ...) tells
its own story and calls these steps in order:

    run = start(...)                 output dir plan and resume decision, data checks, the model's folder
    prepare_data(run, prepare, ...)  tokenizer and template, the data tokenized and fitted, its notes
    arguments(run, dtype, ...)       the TrainingArguments keys every method shares (arguments.py)
    callbacks(run)                   metrics.jsonl, checkpoint manifests, the NaN guard, the progress bar
    attach(run, trainer)             the trainer checked: processes agree, the disk holds its checkpoints
    write_records(run, fingerprint)  recipe.yaml, versions.json, data_fingerprint.json, before training
    trained = fit(run, trainer)      train (resumable), refuse pickled checkpoints, final eval, loss curve
    staging = save(run, trainer, tokenizer)   the adapter, staged
    finish(run, staging, summary(...))        run.json, then everything renamed into place

Only rank 0 prints and writes; the other processes of a multi-process run train and return early."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tune.errors import TrainingError, TuneError
from tune.models.resolve import model_source
from tune.output import clear_dir, move_into, versions, write_json, write_text
from tune.quiet import quiet_libraries
from tune.recipe import Recipe, dump
from tune.train import adapter_variants, benchmarks, distributed, sharded


@dataclass
class RunResult:
    summary: dict  # also written to run.json
    model: object  # the trained PeftModel, for callers (tests, pipelines) that continue in-process


@dataclass
class Run:
    """One `tune run` as every method sees it."""

    recipe: Recipe
    recipe_path: Path  # for the resume command a stopped run prints; relative files are found beside it
    source: str  # the base model's local folder (or hub id), resolved once
    out_dir: Path
    resume_from: Path | None  # the complete checkpoint training continues from
    main: bool  # rank 0: the process that prints and writes
    echo: Callable[[str], None]
    console: object | None  # a rich Console; a terminal gets a live progress bar
    on_gpu: bool
    sharded: bool  # FSDP or ZeRO-3 split the weights across processes
    metrics: object  # MetricsLog: metrics.jsonl and the printed step lines
    created: list[Path] = field(default_factory=list)  # folders this run made; removed if a check fails
    precision: str = "float32"  # bf16 / fp16 / bf16-autocast / float32, as arguments() chose
    allow_data_change: bool = False  # resume even though the data's fingerprint changed
    initial_adapter: dict | None = None  # PiSSA/OLoRA: the adapter's weights before any step (adapter_variants)
    tasks: tuple | None = None  # train.eval_tasks, resolved and loaded (benchmarks.prepare)
    task_scores: dict | None = None  # their base and tuned scores, for run.json

    @property
    def recipe_dir(self) -> Path:
        return self.recipe_path.resolve().parent

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"


@dataclass
class Trained:
    seconds: float
    peak_gpu_bytes: int | None  # what `tune plan` estimates
    epochs: float  # trained by this process: a resumed run's checkpoint brought the rest


def start(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          metric_keys: tuple[str, ...] = (), allow_data_change: bool = False) -> Run:
    """Everything checked before the first slow load: the output dir is writable, none of the run's inputs,
    and either fresh or an unfinished run of this same recipe; the trackers asked for are installed; what
    `tune validate` checks (checks.py) holds, its warnings printed."""
    quiet_libraries()
    import torch

    from tune.train.callbacks import MetricsLog, check_installed
    from tune.train.checkpoints import plan_output_dir
    from tune.train.checks import findings

    recipe_dir = Path(recipe_path).resolve().parent
    out_dir = Path(recipe.output.dir)
    distributed.setup(recipe, recipe_dir)  # several processes: their checks and process group come first
    main = distributed.is_main()
    echo, console = (echo, console) if main else ((lambda line: None), None)
    check_installed(recipe.train)
    if "tensorboard" in recipe.train.report_to:  # transformers 5 reads the event-file folder from here only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out_dir.resolve() / "logs")
    resume_from = None
    if main:
        resume_from = plan_output_dir(recipe, recipe_path, resume, echo)
    resume_from = distributed.share(resume_from)  # every process resumes where rank 0 chose
    distributed.check_resume(resume_from)
    if recipe.model.trust_remote_code:
        echo("warning: model.trust_remote_code is true: Python code from the model's repository will run")
    problems, warnings = findings(recipe, recipe_dir)  # what `tune validate` reports, before slow loads
    if problems:
        raise TuneError(problems)
    for line in warnings:
        echo(f"warning: {line}")
    tasks = benchmarks.prepare(recipe, recipe_dir, echo) if main else None  # a task typo stops before training
    return Run(recipe=recipe, recipe_path=Path(recipe_path), source=model_source(recipe.model, echo), out_dir=out_dir,
               resume_from=resume_from, main=main, echo=echo, console=console,
               on_gpu=torch.cuda.is_available(), sharded=distributed.shards_weights(recipe, recipe_dir),
               metrics=MetricsLog(out_dir / "metrics.jsonl", echo, metric_keys),
               created=[p for p in (out_dir, out_dir / "checkpoints") if not p.exists()],
               allow_data_change=allow_data_change, tasks=tasks)


def starting_adapter(recipe: Recipe, recipe_dir: Path) -> Path:
    """The `model.adapter` run dir (an SFT run whose adapter training continues); its resolved path is what
    the run records, so it is resolved before the resume check compares recipes."""
    from tune.paths import find_file

    name = recipe.model.adapter
    found = find_file(name, recipe_dir)
    if found is None or not found.is_dir():
        raise TuneError(f"model.adapter: no such folder: {name} (give the output dir of an SFT `tune run`)")
    recipe.model.adapter = str(found)
    return found


def prepare_data(run: Run, prepare: Callable, describe: Callable[[object, str], str], **fingerprint) -> tuple:
    """(tokenizer, template label, prepared data): the tokenizer with the run's chat template, and the data
    `prepare` (one of tune.data's prepare functions) makes with it, so every data problem surfaces before
    anything is written. The run's first data line is `describe(data, template label)`, the length policy's
    notes follow, and every process checks it holds the same data. `fingerprint`: what else decides the
    data (GRPO's rewards)."""
    from tune.data.templates import resolve_template
    from tune.models.load import load_tokenizer

    recipe = run.recipe
    tokenizer = load_tokenizer(recipe.model, run.source)
    template, label = resolve_template(recipe.data.template, tokenizer, run.recipe_dir)
    tokenizer.chat_template = template  # saved with the run: generate, predict and reward.model render as trained
    data = prepare(recipe.data, tokenizer, template, run.recipe_dir, recipe.train.seed)
    data.fingerprint.update(fingerprint)
    run.echo(f"data: {describe(data, label)}")
    for note in data.notes:
        run.echo(f"data: {note}")
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=data.fingerprint)
    return tokenizer, label, data


def callbacks(run: Run, guard=None) -> list:
    """The callbacks every method trains with; a method's guard (tune/train/guard.py) comes before the
    checkpoint manifest, as it writes its state into each checkpoint, and takes its state back on --resume."""
    from tune.train.callbacks import ProgressBar, ReturnFreedMemory
    from tune.train.checkpoints import CheckpointManifest, DivergenceGuard, NonFiniteGuard

    if guard is not None and run.resume_from is not None:
        guard.resume(run.resume_from)
    found = [run.metrics, *([guard] if guard is not None else []),
             CheckpointManifest(run.checkpoints, run.recipe.train.keep_checkpoints), NonFiniteGuard(run.checkpoints)]
    if run.recipe.train.method == "sft":  # its loss is token cross-entropy, on the scale DivergenceGuard reads
        init = run.recipe.adapter.init
        found.append(DivergenceGuard(run.checkpoints, f" (adapter.init: {init} starts from the base's own directions, "
                                     "whose scale takes a lower one than a default LoRA)"
                                     if init in adapter_variants.CONVERTED else ""))
    if not run.on_gpu and ReturnFreedMemory.available():  # glibc's heap (Linux); torch's CUDA cache is its own
        found.append(ReturnFreedMemory())
    return found + ([ProgressBar(run.console)] if run.console and run.console.is_terminal else [])


def attach(run: Run, trainer, pair_accuracy: str | None = None) -> tuple[int, int]:
    """The built trainer made ours: our lines instead of its printer, one TensorBoard writer, its pair
    accuracy (the key it logs, if any) over all pairs, the processes' agreement, and a disk that can hold its
    checkpoints. Returns (trainable, total) parameters."""
    from transformers import PrinterCallback

    from tune.models.load import autocast_adapter_inputs
    from tune.train.callbacks import keep_tensorboard_open
    from tune.train.checkpoints import report_write_failures
    from tune.train.pairs import count_pairs

    trainer.remove_callback(PrinterCallback)  # MetricsLog prints the lines users read
    report_write_failures(trainer)
    if pair_accuracy:
        count_pairs(trainer, pair_accuracy)
    if run.precision == "bf16-autocast":
        autocast_adapter_inputs(trainer.model)
    keep_tensorboard_open(trainer)
    distributed.check_trainer(trainer)
    try:
        adapter_variants.prepare(run, trainer)  # EVA may move ranks between layers: count after it
        trainable, total = trainer.model.get_nb_trainable_parameters()
        if run.main:
            made = {p.resolve() for p in run.created}  # named by the folder that existed before the run
            disk = next(p for p in (run.out_dir.resolve(), *run.out_dir.resolve().parents) if p.exists() and p not in made)
            check_disk(disk, trainable, run.recipe.train.keep_checkpoints)
    except TuneError:
        for path in run.created:  # the Trainer made its checkpoint folder; a refused run leaves nothing
            shutil.rmtree(path, ignore_errors=True)
        raise
    for line in distributed.describe(run.recipe, trainer.args):
        run.echo(line)
    return trainable, total


def model_line(run: Run, dtype, parameters: tuple[int, int], adapter: str, knobs: str = "") -> None:
    """The line a method prints once its trainer is built: the base as loaded, the adapter, what trains, and
    the method's own knobs."""
    variants = adapter_variants.describe(run.recipe)
    adapter += f" ({variants})" if variants else ""
    run.echo(f"model: {run.source} ({dtype}, quantization {run.recipe.model.quantization}), {adapter}: "
             f"{parameters[0]:,} trainable of {parameters[1]:,} parameters" + (f"; {knobs}" if knobs else ""))


def device_line(run: Run, model) -> str:
    """What the run chose for this machine: device, threads, precision and the attention kernel."""
    import torch

    device = f"cuda ({torch.cuda.get_device_name()})" if run.on_gpu else f"cpu, {torch.get_num_threads()} threads"
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or "default"
    weights = str(getattr(model, "dtype", "")).replace("torch.", "")
    return f"device: {device}, precision {run.precision} (base weights {weights}), attention {attention}"


def check_disk(folder: Path, trainable: int, keep: int) -> None:
    """Checkpoints hold the adapter and two AdamW moments in float32; refuse a run that cannot fit them."""
    needed = trainable * 4 * 3 * (keep + 1) + trainable * 4 + (64 << 20)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TuneError(f"output.dir: {folder} has {free / 2**20:.0f} MiB free but checkpoints need about "
                        f"{needed / 2**20:.0f} MiB; free space, lower train.keep_checkpoints, or choose "
                        "another output.dir")


def write_records(run: Run, fingerprint: dict) -> None:
    """The run records, written before training so a crashed run still says what it was. A resumed run
    must continue on the data its checkpoints were trained on."""
    if run.main:
        out_dir = run.out_dir
        if run.resume_from is not None and not run.allow_data_change:
            from tune.train.checkpoints import check_same_data

            check_same_data(out_dir / "data_fingerprint.json", fingerprint, run.resume_from)
        if run.recipe.output.overwrite and out_dir.is_dir():
            clear_dir(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "recipe.yaml", dump(run.recipe))
        write_json(out_dir / "versions.json", versions())
        write_json(out_dir / "data_fingerprint.json", fingerprint)
        if run.resume_from is None:
            run.metrics.path.unlink(missing_ok=True)
            shutil.rmtree(run.checkpoints, ignore_errors=True)
        else:
            run.metrics.truncate_after(int(run.resume_from.name.split("-")[-1]))
            run.echo(f"resuming from {run.resume_from}")
    distributed.wait()  # the dir is ready before any process saves into it


def fit(run: Run, trainer, has_eval: bool, out_of_memory_hint: str = "") -> Trained:
    """Train from the resume point, then evaluate once more unless the last step just did, so the last
    eval describes the final weights; the loss curve is drawn from metrics.jsonl."""
    import pickle

    import torch

    from tune.train.callbacks import close_tensorboard
    from tune.train.checkpoints import CheckpointWriteFailed, stopped
    from tune.train.records import plot_losses

    run.echo(device_line(run, trainer.model))
    if run.on_gpu:
        torch.cuda.reset_peak_memory_stats()
    begun = resumed_epoch(run.resume_from)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    except torch.OutOfMemoryError:
        raise TrainingError("out of GPU memory: lower train.batch_size (raise train.gradient_accumulation "
                            "to keep the effective batch), set train.gradient_checkpointing: true, lower "
                            "data.max_length, or load the base in 4-bit (model.quantization: nf4)"
                            f"{out_of_memory_hint}; the last complete checkpoint is kept and "
                            "`tune run --resume` continues") from None
    except KeyboardInterrupt:
        raise stopped(run, trainer.state.global_step, "interrupted") from None
    except pickle.UnpicklingError as exc:  # transformers loads checkpoint states with weights_only=True
        raise TrainingError(f"{run.resume_from}: refused to load a checkpoint file that holds more than tensors "
                            f"({str(exc).splitlines()[0][:160]}); delete that checkpoint, or rerun with "
                            "--overwrite") from None
    except CheckpointWriteFailed as failed:
        if disk_full(failed.error, run.out_dir, writing=True):
            raise stopped(run, trainer.state.global_step, "the disk is full") from None
        said = (str(failed.error).strip().splitlines() or ["no message"])[0][:160]
        raise stopped(run, trainer.state.global_step, f"writing a checkpoint failed ({type(failed.error).__name__}: "
                      f"{said})", first="fix that first") from None
    except Exception as exc:
        if not disk_full(exc, run.out_dir):
            raise
        raise stopped(run, trainer.state.global_step, "the disk is full") from None
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if run.on_gpu else None
    eval_steps = run.recipe.train.eval_steps
    if has_eval and (eval_steps is None or trainer.state.global_step % eval_steps):
        trainer.evaluate()
    close_tensorboard(trainer)
    if run.main:
        plot_losses(run.metrics.records, run.out_dir / "loss_curve.png")
    return Trained(seconds, peak, (trainer.state.epoch or 0.0) - begun)


def resumed_epoch(checkpoint: Path | None) -> float:
    """Where in the data a checkpoint stopped (in epochs), as the Trainer restores it."""
    import json

    state = checkpoint / "trainer_state.json" if checkpoint else None
    if state is None or not state.is_file():
        return 0.0
    return json.loads(state.read_text(encoding="utf-8")).get("epoch") or 0.0


def disk_full(exc: Exception, folder: Path, writing: bool = False) -> bool:
    """A full disk, as each writer reports it: OSError ENOSPC (Python), "file write failed" (torch.save),
    StorageFull (safetensors); and any failed checkpoint write (`writing`) on a disk now nearly full, since
    torch.save may only say "unexpected pos"."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if "No space left on device" in text or "StorageFull" in text:
        return True
    return (writing or "file write failed" in text) and shutil.disk_usage(folder.resolve()).free < (64 << 20)


def save(run: Run, trainer, tokenizer, **save_kwargs) -> Path | None:
    """The adapter and tokenizer written into a staging folder (rank 0; under FSDP/ZeRO-3 every process
    helps gather the weights first). Returns the folder, or None on the other processes."""
    staging = run.out_dir / ".staging"
    if run.main:
        shutil.rmtree(staging, ignore_errors=True)
    with adapter_variants.conversion(run, trainer.model) as converted:
        sharded.save_adapter(trainer, staging, run.main, **save_kwargs, **converted)
    if not run.main:
        return None
    tokenizer.save_pretrained(staging)
    run.task_scores = benchmarks.score_after(run.tasks, run.recipe, trainer.model, tokenizer, staging, run.echo)
    return staging


def summary(run: Run, trainer, trained: Trained, parameters: tuple[int, int], tokens_per_epoch: int, **own) -> dict:
    """run.json: what every method reports, then the method's own keys."""
    records = run.metrics.records
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), float)]
    evals = [r["eval_loss"] for r in records if isinstance(r.get("eval_loss"), float)]
    return {
        "output_dir": str(run.out_dir.resolve()), "model": run.source, "method": run.recipe.train.method,
        **own,
        "steps": trainer.state.global_step, "train_seconds": round(trained.seconds, 2),
        "peak_gpu_memory_bytes": trained.peak_gpu_bytes, "peak_rss_bytes": peak_rss_bytes(),
        "resumed_from": str(run.resume_from) if run.resume_from else None,
        "trainable_parameters": parameters[0], "total_parameters": parameters[1],
        "trained_tokens_per_second": round(tokens_per_epoch * trained.epochs / max(trained.seconds, 1e-9), 1),
        "precision": run.precision,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None, "device": "cuda" if run.on_gpu else "cpu",
        "trust_remote_code": run.recipe.model.trust_remote_code, **distributed.summary(run.recipe),
        **({"eval_tasks": run.task_scores} if run.task_scores else {}),
    }


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory (what a CPU run costs; `tune compare` shows it), None off Linux/macOS."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux kilobytes


def finish(run: Run, staging: Path, summary: dict) -> None:
    write_json(staging / "run.json", summary)
    move_into(staging, run.out_dir)  # each file a rename: the dir never holds half an adapter
