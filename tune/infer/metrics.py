"""Classification metrics from true and predicted label ids, in plain numpy: accuracy, macro-F1,
per-class precision/recall/F1/support and the confusion matrix; written as JSON and as a PNG plot, and
printed as the lines `tune run` and `tune eval` show. A class with no predictions (or no rows) gets
precision (or recall) 0, as scikit-learn's zero_division=0 does, so macro-F1 never hides a dead class."""

from __future__ import annotations

from pathlib import Path

REPORT = "eval_metrics.json"
MATRIX_JSON = "confusion_matrix.json"
MATRIX_PNG = "confusion_matrix.png"


def classification_report(true_ids, predicted_ids, names: list[str]) -> dict:
    import numpy as np

    true, predicted = np.asarray(true_ids, dtype=int), np.asarray(predicted_ids, dtype=int)
    size = len(names)
    matrix = np.zeros((size, size), dtype=int)  # rows: true label, columns: predicted label
    np.add.at(matrix, (true, predicted), 1)
    hits = np.diag(matrix).astype(float)
    predicted_count, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted_count, out=np.zeros(size), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros(size), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(size), where=both > 0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(names)}
    return {
        "examples": int(len(true)),
        "accuracy": float(hits.sum() / len(true)) if len(true) else 0.0,
        "macro_f1": float(f1.mean()) if size else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(names), "rows": "true label", "columns": "predicted label",
                             "matrix": matrix.tolist()},
    }


def report_lines(report: dict) -> list[str]:
    """What a person reads: the headline, then one line per class, then the matrix."""
    names = report["confusion_matrix"]["labels"]
    width = max(len(name) for name in names + ["label"])
    lines = [f"accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on {report['examples']} examples",
             f"{'label':<{width}}  precision  recall      f1  support"]
    for name, row in report["per_class"].items():
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}")
    lines.append("confusion matrix (rows true, columns predicted): "
                 + "; ".join(f"{name} {row}" for name, row in zip(names, report["confusion_matrix"]["matrix"])))
    return lines


def write_report(report: dict, folder: Path, step: int | None = None) -> None:
    """eval_metrics.json (everything), confusion_matrix.json and confusion_matrix.png, each atomically."""
    from tune.output import write_json

    folder = Path(folder)
    write_json(folder / REPORT, ({"step": step} if step is not None else {}) | report)
    write_json(folder / MATRIX_JSON, report["confusion_matrix"])
    plot_confusion(report, folder / MATRIX_PNG)


def plot_confusion(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    import numpy as np

    names = report["confusion_matrix"]["labels"]
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    side = min(12, 2.5 + 0.6 * len(names))
    figure, axis = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted label")
    axis.set_ylabel("true label")
    axis.set_title(f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")  # readable on dark and light cells
    figure.tight_layout()
    from tune.output import save_png

    return save_png(figure, path)
