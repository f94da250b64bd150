"""Checkpoints that can be trusted: a checkpoint counts only when its manifest (written last, with
the sha256 of every file) matches what is on disk. Rotation happens after the manifest, so a crash at
any moment leaves at least the previous complete checkpoint. Also the guard that stops a run at the
first non-finite gradient, before the optimizer can write NaN into the adapter."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import yaml
from transformers import TrainerCallback

from tune.errors import TrainingError, TuneError
from tune.output import file_sha256, write_json

MANIFEST = "manifest.json"
PREFIX = "checkpoint-"


def write_manifest(checkpoint: Path, step: int) -> None:
    files = {str(p.relative_to(checkpoint)): file_sha256(p) for p in sorted(checkpoint.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    write_json(checkpoint / MANIFEST, {"step": step, "files": files})


def is_complete(checkpoint: Path) -> tuple[bool, str]:
    """(complete?, why not). The files on disk must be exactly the manifest's, with the same hashes."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        return False, "no manifest (interrupted while being written)"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError):
        return False, "unreadable manifest"
    on_disk = {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST}
    if on_disk != set(files):
        return False, f"files differ from its manifest ({sorted(on_disk ^ set(files))[:3]})"
    for name, digest in files.items():
        if file_sha256(checkpoint / name) != digest:
            return False, f"{name} does not match its checksum"
    return True, ""


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix(PREFIX))


def all_checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and p.name.removeprefix(PREFIX).isdigit()]
    return sorted(found, key=step_of)


def latest_complete(folder: Path, warn=print) -> Path | None:
    """The newest complete checkpoint; incomplete ones are reported and skipped."""
    for checkpoint in reversed(all_checkpoints(folder)):
        complete, why = is_complete(checkpoint)
        if complete:
            return checkpoint
        warn(f"warning: ignoring {checkpoint}: {why}")
    return None


class CheckpointWriteFailed(Exception):
    """Writing a checkpoint failed (torch.save, safetensors, a JSON file, its manifest); `error` says why."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def report_write_failures(trainer) -> None:
    """Whatever fails while the built trainer writes a checkpoint arrives as CheckpointWriteFailed, so the
    run stops the way a full disk stops it. A disk filled mid-write is not always an OSError: torch.save
    reports `[enforce fail at inline_container.cc:672] . unexpected pos 40896 vs 40784`."""
    save = trainer._save_checkpoint

    def saving(*args, **kwargs):
        try:
            return save(*args, **kwargs)
        except Exception as exc:
            raise CheckpointWriteFailed(exc) from exc

    trainer._save_checkpoint = saving


class CheckpointManifest(TrainerCallback):
    """After the Trainer saves checkpoint-N: write its manifest, then drop the oldest complete ones."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = Path(folder), keep

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:  # every process writes its own RNG state into the checkpoint: hash after all have
            from tune.train.distributed import wait

            wait()
        if not state.is_world_process_zero:
            return
        checkpoint = self.folder / f"{PREFIX}{state.global_step}"
        try:
            write_manifest(checkpoint, state.global_step)
        except Exception as exc:
            raise CheckpointWriteFailed(exc) from exc
        older = [p for p in all_checkpoints(self.folder) if step_of(p) < state.global_step]
        for stale in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first step whose gradients hold NaN or inf, before the optimizer step."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        # One fused norm and one device sync per step instead of one sync per tensor (224 for a 1B
        # model); NaN or inf in any gradient makes the norm non-finite. Only then is each tensor checked.
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return
        bad = [name for name, p in model.named_parameters()
               if p.requires_grad and p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            last = latest_complete(self.folder, warn=lambda line: None)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"step {state.global_step + 1}: the loss or gradients are not finite (NaN/inf, first in "
                f"{bad[0]}); stopped before the optimizer step, so no NaN weights were saved; {kept}. "
                "Lower train.learning_rate, keep train.max_grad_norm > 0, or check the data near this step")


class DivergenceGuard(TrainerCallback):
    """Stops a token-level cross-entropy run (SFT) whose logged loss has left the range of any working
    model: above ln(vocabulary size), worse than guessing every token uniformly, and over twice its first
    logged value (a random model starts near ln(V) itself). Such a loss is finite, so NonFiniteGuard lets it
    through, and every later step trains a broken model: one run at a learning rate its adapter init could
    not take went from 0.73 to 17.6 in 8 steps and ended at 7.9, every general answer lost."""

    def __init__(self, folder: Path, hint: str = ""):
        self.folder = Path(folder)
        self.hint = hint  # why this recipe may have diverged, for the message
        self.first: tuple[int, float] | None = None

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        import math

        loss = (logs or {}).get("loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss) or model is None:
            return
        if self.first is None:
            self.first = state.global_step, float(loss)
            return
        vocabulary = model.get_output_embeddings().weight.shape[0]
        if loss > math.log(vocabulary) and loss > 2 * self.first[1]:
            last = latest_complete(self.folder, warn=lambda line: None)
            kept = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"step {state.global_step}: the loss rose from {self.first[1]:.2f} (step {self.first[0]}) to "
                f"{loss:.2f}, worse than guessing uniformly among the {vocabulary} tokens (ln = "
                f"{math.log(vocabulary):.2f}): training diverged and was stopped; {kept}. Lower "
                f"train.learning_rate{self.hint}")


def plan_output_dir(recipe, recipe_path: Path, resume: bool, warn=print) -> Path | None:
    """The output dir checked as every run (and the --nproc launcher) must: none of the run's inputs, writable,
    and either fresh or an unfinished run of this recipe. Returns the checkpoint to resume from, if any."""
    from tune.output import check_replaceable, check_writable

    out_dir = Path(recipe.output.dir)
    check_replaceable(out_dir, input_paths(recipe, Path(recipe_path)), "output.dir", recipe.output.overwrite)
    check_writable(out_dir)
    return plan_run_dir(out_dir, recipe.model_dump(mode="json"), resume, recipe.output.overwrite, warn)


def plan_run_dir(out_dir: Path, resolved: dict, resume: bool, overwrite: bool, warn=print) -> Path | None:
    """Decide what a run does with its output dir; returns the checkpoint to resume from, if any.
    Empty or missing -> fresh run. Same recipe, unfinished -> resume from its latest complete checkpoint
    (or restart when it has none). Finished, foreign or different-recipe dirs are refused."""
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    if not occupied or overwrite:
        if resume and not occupied:
            raise TuneError(f"--resume: {out_dir} holds no run to resume")
        return None
    if (out_dir / "adapter_model.safetensors").exists():
        hint = "there is nothing to resume" if resume else "choose another with --set output.dir=..."
        raise TuneError(f"output.dir: {out_dir} holds a finished run; {hint} or pass --overwrite")
    saved_path = out_dir / "recipe.yaml"
    if not saved_path.is_file():
        raise TuneError(f"output.dir: {out_dir} is not empty; choose another with --set output.dir=... "
                        "or pass --overwrite")
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    current = _flatten(resolved)
    changed = sorted(key for key in saved.keys() | current.keys()
                     if saved.get(key) != current.get(key) and key != "output.overwrite")
    if changed:
        raise TuneError(f"output.dir: {out_dir} holds an unfinished run of a different recipe "
                        f"({', '.join(changed)} changed); resume with the same recipe, or pass --overwrite")
    checkpoint = latest_complete(out_dir / "checkpoints", warn)
    if checkpoint is None:
        warn(f"note: {out_dir} has no complete checkpoint; starting the run from step 0")
    newer = [p for p in all_checkpoints(out_dir / "checkpoints") if checkpoint is None or step_of(p) > step_of(checkpoint)]
    for broken in newer:  # incomplete by construction; the resumed run rewrites these steps
        shutil.rmtree(broken)
    return checkpoint


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "columns":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stopped(run, step: int, why: str, first: str = "free space first") -> TuneError:
    """Ctrl-C, a full disk or a failed checkpoint write during training: the checkpoint being written (no
    manifest yet) is removed, and the one line says where the run stopped, what is kept and the command that
    continues it (after `first`)."""
    from tune.errors import Interrupted

    for checkpoint in all_checkpoints(run.checkpoints):
        if not (checkpoint / MANIFEST).is_file():
            shutil.rmtree(checkpoint, ignore_errors=True)
    last = latest_complete(run.checkpoints, warn=lambda line: None)
    again = f"the same `tune run {shlex.quote(str(run.recipe_path))} ...` command (and --set options) with --resume"
    kept = (f"the last complete checkpoint is {last}; continue by running {again}" if last else
            "no checkpoint was complete yet, so the next run starts from step 0")
    if why == "interrupted":
        return Interrupted(f"interrupted at step {step}: {kept}")
    return TrainingError(f"{why} at step {step}: the checkpoint being written was removed; {kept} ({first})")


def input_paths(recipe, recipe_path: Path) -> dict[str, Path]:
    """What a run reads, which its output dir must never be, hold or sit inside: the recipe, its data,
    probe, prompt and template files, the base model's folder and a continued adapter run."""
    from tune.data.sources import resolve_sources
    from tune.models.resolve import resolve_model
    from tune.paths import find_file

    recipe_dir = recipe_path.resolve().parent
    found = {"the recipe": recipe_path}
    for key, spec in (("data.train", recipe.data.train), ("data.eval", recipe.data.eval)):
        try:
            sources = resolve_sources(spec, recipe_dir, key) if spec is not None else []
        except TuneError:
            sources = []  # the data check reports it
        for number, source in enumerate(sources, start=1):
            if source.path or source.saved:
                found[f"{key} data (source {number})"] = source.path or source.saved
    named = {"data.probes": recipe.data.probes, "data.replay_prompts": [recipe.data.replay_prompts],
             "data.template": [recipe.data.template], "model.adapter": [recipe.model.adapter or ""]}
    for key, names in named.items():
        for name in names:
            path = find_file(name, recipe_dir) if name else None
            if path is not None and (key != "data.template" or path.is_file()):
                found[f"{key} ({name})"] = path
    try:
        base = Path(resolve_model(recipe.model.name))
    except TuneError:
        base = None
    if base is not None and base.exists():
        found["the base model"] = base
    return found


def check_same_data(saved_path: Path, fingerprint: dict, resume_from: Path) -> None:
    """A resumed run trains its remaining steps on the data its checkpoint saw, or is refused."""
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    changed = [key for key in sorted(saved.keys() | fingerprint.keys()) if saved.get(key) != fingerprint.get(key)]
    if not changed:
        return
    before = {s.get("spec"): s.get("sha256") for s in saved.get("sources", [])}
    now = {s.get("spec"): s.get("sha256") for s in fingerprint.get("sources", [])}
    files = [spec for spec in sorted(before.keys() | now.keys(), key=str) if before.get(spec) != now.get(spec)]
    what = ", ".join(changed) + (f"; files: {', '.join(map(str, files))}" if files else "")
    raise TuneError(f"--resume: the data differs from what {resume_from} was trained on ({what}); resuming would "
                    "train the remaining steps on other data. Restore it, start over with --overwrite, or pass "
                    "--allow-data-change to continue anyway")
