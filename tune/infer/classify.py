"""`tune eval` and `tune predict` for a classify run: the classification report on a labelled file, and
each row's predicted label with per-label probabilities."""

from __future__ import annotations

import json
from pathlib import Path

from tune.errors import TuneError
from tune.models.classifier import load_run, probabilities


def _data_section(recipe, data_file: Path):
    from tune.recipe import DataSection

    return DataSection.model_validate(recipe.data.model_dump() | {"train": str(data_file), "eval": None,
                                                                  "eval_fraction": 0.0})


def evaluate_file(model_dir: Path, data_file: Path, echo=None, granted: frozenset[str] = frozenset()) -> dict:
    """The classification report of a run on a labelled file (see tune/infer/metrics.py)."""
    from tune.data.classification import label_ids, read_labelled
    from tune.infer.metrics import classification_report

    model, tokenizer, names, recipe = load_run(model_dir, echo, granted)
    data = _data_section(recipe, data_file)
    rows = read_labelled(data, data.train, "--data", Path.cwd(), seed=0)
    truth = label_ids(rows, {name: i for i, name in enumerate(names)})
    probs = probabilities(model, tokenizer, [(text, pair) for _, text, pair, _ in rows], data.max_length)
    return classification_report(truth, probs.argmax(axis=1), names)


def predict_file(model_dir: Path, data_file: Path, out_file: Path, echo=None,
                 granted: frozenset[str] = frozenset()) -> int:
    """Write each row with its predicted label and per-label probabilities: JSONL, or CSV by extension."""
    import csv
    import io

    from tune.data.classification import row_fields
    from tune.data.rows import load_rows
    from tune.output import write_text

    suffix = Path(out_file).suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise TuneError(f"--out: {out_file}: write .jsonl or .csv")
    model, tokenizer, names, recipe = load_run(model_dir, echo, granted)
    data = _data_section(recipe, data_file)
    rows = load_rows(data, data.train, "--data", Path.cwd(), seed=0)
    pairs = [row_fields(row, data.columns, where, need_label=False)[:2] for where, row in rows]
    probs = probabilities(model, tokenizer, pairs, data.max_length)
    results = []
    for (_, row), row_probs in zip(rows, probs):
        scores = {name: round(float(p), 6) for name, p in zip(names, row_probs)}
        results.append(row | {"predicted_label": names[int(row_probs.argmax())], "probabilities": scores})
    if suffix == ".jsonl":
        write_text(out_file, "".join(json.dumps(result, ensure_ascii=False) + "\n" for result in results))
        return len(results)
    # CSV: the input columns, the predicted label, then one probability column per label
    flat = [{k: v for k, v in r.items() if k != "probabilities"} | {f"p_{name}": p for name, p in r["probabilities"].items()}
            for r in results]
    fields = list(dict.fromkeys(key for row in flat for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    write_text(out_file, buffer.getvalue())
    return len(results)
