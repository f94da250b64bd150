"""Trainer callbacks shared by the trainers: metrics.jsonl and the progress lines users watch."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

# Logged by every method; each method adds its own (train/<method>.py's METRICS).
KEPT = ("loss", "eval_loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_mean_token_accuracy", "epoch")


class ReturnFreedMemory(TrainerCallback):
    """glibc keeps the pages of freed tensors in its heap, so a CPU run's resident memory climbs past what
    it holds live (SmolLM2 SFT: over 1 GiB of free heap between steps, 0.6 GiB at the peak). Handing them
    back after every forward/backward: peak RSS 2760 -> 2480 MiB, for 8% more training time (the pages are
    faulted in again; 36.4 -> 39.5 s, medians of 2). Once per optimizer step kept only half the saving
    (2660 MiB) for 4% more time."""

    def __init__(self):
        self.trim = _malloc_trim()

    @classmethod
    def available(cls) -> bool:
        return _malloc_trim() is not None

    def on_substep_end(self, args, state, control, **kwargs):
        self.trim(0)

    def on_step_end(self, args, state, control, **kwargs):
        self.trim(0)


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)
    except OSError:
        return None


class MetricsLog(TrainerCallback):
    """Appends one JSON line per log event (step, loss, lr, eval loss...) and prints a short line."""

    def __init__(self, path: Path, echo=print, extra_keys: tuple[str, ...] = ()):
        self.path = Path(path)
        self.echo = echo
        self.keys = KEPT + tuple(extra_keys)
        self.records: list[dict] = []

    def truncate_after(self, step: int) -> None:
        """On resume: forget records past the checkpoint, so metrics.jsonl reads like one clean run."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if (_record(line) or {}).get("step", step + 1) <= step]
        self.records = [json.loads(line) for line in kept]
        from tune.output import write_text

        write_text(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step}
        record.update({key: _clean(logs[key]) for key in self.keys if key in logs})
        if not {"loss", "eval_loss", "learning_rate"} & record.keys():
            return  # end-of-training summaries carry none of the keys
        self.add(record, state.max_steps)

    def add(self, record: dict, max_steps: int) -> None:
        """One record into metrics.jsonl and one printed line: the trainer's logs, and tune's own evaluations
        (GRPO's held-out reward and probes)."""
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        parts = [f"step {record['step']:>5}/{max_steps}"]
        parts += [shown.format(record[key]) for key, shown in SHOWN.items() if isinstance(record.get(key), float)]
        self.echo("  ".join(parts))


# What a step line shows, when logged. GRPO's loss sits near 0 by construction: its reward is what moves.
SHOWN = {"loss": "loss {:.4f}", "reward": "reward {:.3f}", "reward_std": "± {:.3f}",
         "frac_reward_zero_std": "zero-spread {:.0%}", "kl": "kl {:.4f}", "accuracy": "pairs right {:.0%}", "rewards/accuracies": "pairs right {:.0%}", "eval_loss": "eval_loss {:.4f}",
         "eval_reward": "held-out reward {:.3f}", "probes_kept": "probes kept {:.0%}", "learning_rate": "lr {:.2e}"}


def _record(line: str) -> dict | None:
    """One metrics.jsonl line, or None for a line cut short (the disk filled, or the process died mid-write)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _clean(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)


def keep_tensorboard_open(trainer) -> None:
    """Trainer closes TensorBoard's writer at train end and the final evaluate opens a second one; tensorboardX
    names event files by the second, so a run shorter than a second overwrote its own training curve."""
    from transformers.integrations import TensorBoardCallback

    class TensorBoardUntilClosed(TensorBoardCallback):
        def on_train_end(self, args, state, control, **kwargs):
            if self.tb_writer is not None:
                self.tb_writer.flush()

    if trainer.pop_callback(TensorBoardCallback) is not None:
        trainer.add_callback(TensorBoardUntilClosed())


def close_tensorboard(trainer) -> None:
    for callback in trainer.callback_handler.callbacks:
        if getattr(callback, "tb_writer", None) is not None:
            callback.tb_writer.close()
            callback.tb_writer = None


class ProgressBar(TrainerCallback):
    """A rich progress bar with ETA; log lines printed through the same console appear above it."""

    def __init__(self, console):
        self.console = console
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step)
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_installed(train) -> None:
    """The packages and hardware a recipe's train section asks for, before anything slow happens."""
    import importlib.util

    from tune.errors import TuneError

    missing = [name for name in train.report_to
               if not any(importlib.util.find_spec(package) for package in TRACKER_PACKAGES[name])]
    if missing:
        raise TuneError(f"train.report_to: {', '.join(missing)} not installed; "
                        f"pip install {' '.join(TRACKER_PACKAGES[name][0] for name in missing)}")
    if train.use_liger_kernel is True:
        import torch

        if importlib.util.find_spec("liger_kernel") is None:
            raise TuneError("train.use_liger_kernel: the liger-kernel package is not installed; "
                            "pip install liger-kernel (CUDA GPUs only), or set it to false")
        if not torch.cuda.is_available():
            raise TuneError("train.use_liger_kernel: Liger's Triton kernels need a CUDA GPU; set it to false on this machine")


def liger_kernel(train, method: str) -> bool:
    """train.use_liger_kernel resolved. auto: on for SFT where it runs (a CUDA GPU, liger-kernel installed),
    where an H100 measured +24% (1B) and +51% (8B) tokens/s with less memory (docs/performance.md);
    off for DPO and classification, whose Liger paths were not measured."""
    if train.use_liger_kernel != "auto":
        return train.use_liger_kernel
    import importlib.util

    import torch

    return method == "sft" and torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
