"""Classification metrics from true and predicted label ids, in plain numpy: accuracy, macro-F1,
per-class precision/recall/F1/support and the confusion matrix; written as JSON and as a PNG plot, and
printed as the lines `tune run` and `tune eval` show. What is printed and stored stays small whatever the
label count: at 20,000 labels the full report is 20,000 lines and a matrix of 400 million numbers. A class with no predictions (or no rows) gets
precision (or recall) 0, as scikit-learn's zero_division=0 does, so macro-F1 never hides a dead class."""

from __future__ import annotations

from pathlib import Path

REPORT = "eval_metrics.json"
MATRIX_JSON = "confusion_matrix.json"
MATRIX_PNG = "confusion_matrix.png"
# Above this many labels the N x N matrix is not built, stored or plotted: 20,000 labels make 400 million
# cells (3.2 GB to count, far more as JSON); the most confused pairs stand in for it.
MATRIX_LIMIT = 100
PRINTED = 12  # classes printed, the ones with the most rows; eval_metrics.json holds every class
CONFUSED = 20  # most confused (true, predicted) pairs kept


def classification_report(true_ids, predicted_ids, names: list[str]) -> dict:
    from collections import Counter

    import numpy as np

    true, predicted = np.asarray(true_ids, dtype=int), np.asarray(predicted_ids, dtype=int)
    size = len(names)
    hits = np.bincount(true[true == predicted], minlength=size).astype(float)
    predicted_count, support = np.bincount(predicted, minlength=size), np.bincount(true, minlength=size)
    precision = np.divide(hits, predicted_count, out=np.zeros(size), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros(size), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(size), where=both > 0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(names)}
    confusion = {"labels": list(names), "rows": "true label", "columns": "predicted label"}
    if size <= MATRIX_LIMIT:
        matrix = np.zeros((size, size), dtype=int)
        np.add.at(matrix, (true, predicted), 1)
        confusion["matrix"] = matrix.tolist()
    else:
        confusion["matrix"] = None
        confusion["omitted"] = (f"{size:,} labels: the matrix is stored for at most {MATRIX_LIMIT}; most_confused "
                                "holds its largest cells off the diagonal")
    pairs = Counter((int(t), int(p)) for t, p in zip(true, predicted) if t != p)
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:CONFUSED]
    return {
        "examples": int(len(true)),
        "accuracy": float(hits.sum() / len(true)) if len(true) else 0.0,
        "macro_f1": float(f1.mean()) if size else 0.0,
        "per_class": per_class,
        "most_confused": [{"true": names[t], "predicted": names[p], "count": count} for (t, p), count in ranked],
        "confusion_matrix": confusion,
    }


def report_lines(report: dict) -> list[str]:
    """What a person reads: the headline, one line per class (the PRINTED with the most rows, then what the
    rest add up to), then the matrix (small label sets) or the most confused pairs."""
    from tune.output import listed

    per_class = report["per_class"]
    shown = sorted(per_class, key=lambda name: -per_class[name]["support"])[:PRINTED]  # stable: ties keep id order
    width = max(len(name) for name in shown + ["label"])
    lines = [f"accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on {report['examples']} examples",
             f"{'label':<{width}}  precision  recall      f1  support"]
    for name in shown if len(per_class) > PRINTED else per_class:
        row = per_class[name]
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}")
    if len(per_class) > PRINTED:
        rest = [row for name, row in per_class.items() if name not in set(shown)]
        lines.append(f"... {len(rest):,} more labels with {sum(row['support'] for row in rest):,} examples, mean f1 "
                     f"{sum(row['f1'] for row in rest) / len(rest):.4f} (every label in {REPORT})")
    matrix = report["confusion_matrix"]
    if matrix["matrix"] is not None and len(per_class) <= PRINTED:
        lines.append("confusion matrix (rows true, columns predicted): "
                     + "; ".join(f"{name} {row}" for name, row in zip(matrix["labels"], matrix["matrix"])))
    elif report.get("most_confused"):
        lines.append("most confused (true -> predicted): " + listed(
            [f"{pair['true']} -> {pair['predicted']} {pair['count']}" for pair in report["most_confused"]]))
    return lines


def write_report(report: dict, folder: Path, step: int | None = None) -> None:
    """eval_metrics.json (everything), confusion_matrix.json and confusion_matrix.png, each atomically; over
    MATRIX_LIMIT labels the JSON says why it holds no matrix, and there is no plot."""
    from tune.output import write_json

    folder = Path(folder)
    write_json(folder / REPORT, ({"step": step} if step is not None else {}) | report)
    write_json(folder / MATRIX_JSON, report["confusion_matrix"])
    if report["confusion_matrix"]["matrix"] is not None:
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
    # a count per cell is legible up to about 30 labels; 100 labels' 10,000 counts took 6 s per evaluation
    for (row, column), count in np.ndenumerate(matrix) if len(names) <= 30 else ():
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")  # readable on dark and light cells
    figure.tight_layout()
    from tune.output import save_png

    return save_png(figure, path)
