"""`tune compare RUN_A RUN_B ...`: runs side by side from their output dirs alone (no model is loaded): what
differs in their resolved recipes, losses, rewards, probe and evaluation scores, time and memory, and one
PNG overlaying their training curves."""

from __future__ import annotations

import json
from pathlib import Path

from tune.errors import TuneError

SKIPPED_KEYS = ("output.dir",)  # differs between any two runs and says nothing about them


def read_run(folder: Path) -> dict:
    import yaml

    folder = Path(folder)
    if not (folder / "run.json").is_file() or not (folder / "recipe.yaml").is_file():
        raise TuneError(f"{folder}: not a finished `tune run` output dir (it needs run.json and recipe.yaml)")
    try:
        run = {"path": folder, "summary": json.loads((folder / "run.json").read_text(encoding="utf-8")),
               "recipe": yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8")) or {},
               "records": _jsonl(folder / "metrics.jsonl")}
        for name in ("probes.json", "rewards.json", "eval_metrics.json", "eval/lm-eval.json"):
            if (folder / name).is_file():
                run[name] = json.loads((folder / name).read_text(encoding="utf-8"))
        run["generation"] = {path.stem.removeprefix("generation-"): json.loads(path.read_text(encoding="utf-8"))
                             for path in sorted((folder / "eval").glob("generation-*.json"))}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise TuneError(f"{folder}: a run file cannot be read ({str(exc).splitlines()[0]})") from None
    return run


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def flatten(section, prefix: str = "") -> dict:
    if not isinstance(section, dict):
        return {prefix: section}
    found = {}
    for key, value in section.items():
        found |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def recipe_differences(runs: list[dict]) -> list[tuple[str, list]]:
    flat = [flatten(run["recipe"]) for run in runs]
    keys = sorted(set().union(*flat))
    return [(key, [each.get(key) for each in flat]) for key in keys
            if key not in SKIPPED_KEYS and len({json.dumps(each.get(key), sort_keys=True) for each in flat}) > 1]


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "step" in r]


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def rows(runs: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) for everything at least one run has."""
    table = [(key, [json.dumps(value) if isinstance(value, (dict, list)) else str(value)
                                 for value in values]) for key, values in recipe_differences(runs)]

    def add(label, cells):
        if any(cell != "-" for cell in cells):
            table.append((label, cells))

    summaries = [run["summary"] for run in runs]
    for key in ("method", "steps", "first_loss", "last_loss", "eval_loss"):
        add(key.replace("_", " "), [_number(s.get(key)) for s in summaries])
    add("best loss", [_number(min((v for _, v in _series(run["records"], "loss")), default=None)) for run in runs])
    add("best eval loss", [_number(min((v for _, v in _series(run["records"], "eval_loss")), default=None))
                           for run in runs])
    rewards = [_series(run["records"], "reward") for run in runs]
    add("reward first -> last (best)", [f"{s[0][1]:.3f} -> {s[-1][1]:.3f} ({max(v for _, v in s):.3f})" if s else "-"
                                        for s in rewards])
    add("held-out reward base -> tuned", [f"{r['base']:.3f} -> {r['tuned']:.3f}" if r else "-"
                                          for r in (run.get("rewards.json") for run in runs)])
    sets = sorted(set().union(*((run.get("probes.json") or {}).get("shares", {}) for run in runs)))
    for name in sets:
        add(f"probes {name} base -> tuned", [_share((run.get("probes.json") or {}).get("shares", {}).get(name))
                                             for run in runs])
    for name in sets:
        add(f"probes {name} kept", [_number(((run.get("probes.json") or {}).get("shares", {}).get(name) or {})
                                            .get("kept"), 2) for run in runs])
    add("checkpoint kept", [str(s["kept"]) if s.get("kept") else "-" for s in summaries])
    add("unseen accuracy base -> tuned", [
        f"{s['unseen_accuracy_base']:.2f} -> {s['unseen_accuracy_tuned']:.2f}"
        if s.get("unseen_accuracy_tuned") is not None else "-" for s in summaries])
    for key in ("accuracy", "macro_f1"):
        add(f"eval {key}", [_number((run.get("eval_metrics.json") or {}).get(key)) for run in runs])
    _evaluations(runs, add)
    add("train seconds", [_number(s.get("train_seconds"), 1) for s in summaries])
    add("tokens per second", [_number(s.get("trained_tokens_per_second"), 1) for s in summaries])
    add("peak RSS GiB (process)", [_number(s["peak_rss_bytes"] / 2**30, 2) if s.get("peak_rss_bytes") else "-"
                                   for s in summaries])
    add("peak GPU memory GiB", [_number(s["peak_gpu_memory_bytes"] / 2**30, 2) if s.get("peak_gpu_memory_bytes")
                                else "-" for s in summaries])
    return table


def _share(shares: dict | None) -> str:
    if not shares:
        return "-"
    return f"{shares.get('base_share', 0):.2f} -> {shares.get('tuned_share', 0):.2f}"


def _evaluations(runs: list[dict], add) -> None:
    """`tune eval` results saved in each run's eval/ folder: lm-eval tasks and generation metrics."""
    tasks = sorted(set().union(*((run.get("eval/lm-eval.json") or {}).get("tasks", {}) for run in runs)))
    for task in tasks:
        entries = [(run.get("eval/lm-eval.json") or {}).get("tasks", {}).get(task) for run in runs]
        metrics = sorted({m for e in entries if e for m in e["tuned"] if "_stderr" not in m})
        for metric in metrics:
            add(f"lm-eval {task} {metric}", [_number(e["tuned"].get(metric)) if e else "-" for e in entries])
    files = sorted(set().union(*(run["generation"] for run in runs)))
    for name in files:
        for metric in ("exact_match", "contains", "rouge_l", "bleu", "chrf"):
            add(f"{name} {metric}", [_number(run["generation"][name]["scores"].get(metric))
                                     if name in run["generation"] else "-" for run in runs])


def plot(runs: list[dict], labels: list[str], path: Path) -> Path | None:
    """Training loss of each run against the step (the mean reward instead when every run is reward-driven),
    eval loss dotted in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tune.output import save_png

    key = "reward" if all(_series(run["records"], "reward") for run in runs) else "loss"
    if not any(_series(run["records"], key) for run in runs):
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for run, label in zip(runs, labels):
        steps, values = zip(*_series(run["records"], key)) or ((), ())
        line, = axis.plot(steps, values, label=label)
        evals = _series(run["records"], "eval_loss") if key == "loss" else []
        if evals:
            axis.plot(*zip(*evals), linestyle=":", marker="o", color=line.get_color(), label=f"{label} (eval)")
    axis.set_xlabel("step")
    axis.set_ylabel("mean reward" if key == "reward" else "loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return save_png(figure, path)


def labels_for(paths: list[Path]) -> list[str]:
    """Each run's folder name, or its path relative to the common parent when names repeat."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def compare(paths: list[Path], plot_path: Path | None) -> dict:
    if len(paths) < 2:
        raise TuneError("tune compare needs at least two run dirs")
    runs = [read_run(path) for path in paths]
    labels = labels_for(paths)
    written = plot(runs, labels, plot_path) if plot_path is not None else None
    return {"labels": labels, "rows": rows(runs), "plot": str(written) if written else None}
