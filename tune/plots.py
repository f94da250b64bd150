"""The loss curve every run leaves in its output dir (train and eval loss against the step)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def plot_losses(records: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), float)]
    if not train and not evals:
        return None
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axis.plot(*zip(*train), label="train loss")
    if evals:
        axis.plot(*zip(*evals), marker="o", label="eval loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return save_png(figure, path)


def save_png(figure, path: Path) -> Path:
    """Write a matplotlib figure atomically (temp file, then rename) and release it."""
    import matplotlib.pyplot as plt

    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temp, format="png")
        os.replace(temp, path)
    finally:
        plt.close(figure)
        Path(temp).unlink(missing_ok=True)
    return path
