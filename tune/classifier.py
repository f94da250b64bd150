"""A sequence classifier: the base model with a fresh label head (for training), or a finished
`train.method: classify` run (base + adapter + head, for `tune eval` and `tune predict`), and the
batched forward pass both use. torch/transformers/peft are imported inside the functions."""

from __future__ import annotations

import json
from pathlib import Path

from tune.errors import TuneError
from tune.recipe import ModelSection

LABELS_FILE = "labels.json"


def load_base(model: ModelSection, names: list[str], tokenizer, gradient_checkpointing: bool = False):
    """(model, new module names): AutoModelForSequenceClassification with one output per label, the
    label names in its config, and the tokenizer's pad id, which decoder LMs need to find each row's
    last real token. New modules are the ones the checkpoint did not hold (the head)."""
    from transformers import AutoModelForSequenceClassification

    from tune.models import _not_found, load_arguments, prepare_quantized

    source, kwargs = load_arguments(model)
    kwargs |= {"num_labels": len(names), "id2label": dict(enumerate(names)),
               "label2id": {name: i for i, name in enumerate(names)}, "pad_token_id": tokenizer.pad_token_id}
    try:
        base, info = AutoModelForSequenceClassification.from_pretrained(source, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise TuneError(_not_found(model.name, exc)) from None
    base.config.pad_token_id = tokenizer.pad_token_id  # some configs ignore the load-time override
    base = prepare_quantized(base, model, gradient_checkpointing)
    new = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", ())})
    return base, new


def read_labels(model_dir: Path) -> list[str]:
    path = Path(model_dir) / LABELS_FILE
    if not path.is_file():
        raise TuneError(f"{model_dir}: no {LABELS_FILE}; is this the output dir of a `train.method: classify` run?")
    return json.loads(path.read_text(encoding="utf-8"))["labels"]


def load_run(model_dir: Path):
    """(model, tokenizer, label names, recipe) of a finished classify run, ready for inference."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tune.generate import run_recipe

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").is_file():
        raise TuneError(f"{model_dir}: not a finished run (no adapter_config.json)")
    recipe = run_recipe(model_dir)
    if recipe is None:
        raise TuneError(f"{model_dir}: adapter without recipe.yaml, so its base model is unknown")
    names = read_labels(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base, _ = load_base(recipe.model, names, tokenizer)
    model = PeftModel.from_pretrained(base, model_dir)
    model.eval()
    return model, tokenizer, names, recipe


def probabilities(model, tokenizer, pairs: list[tuple[str, str | None]], max_length: int, batch_size: int = 32):
    """Softmax over the labels for each (text, text_pair), as a numpy array [rows, labels]."""
    import numpy as np
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            texts, others = [text for text, _ in batch], [pair for _, pair in batch]
            encoded = tokenizer(texts, others if any(others) else None, truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt").to(model.device)
            logits = model(**encoded).logits.float()
            chunks.append(torch.softmax(logits, dim=-1).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, len(model.config.id2label)))


def _data_section(recipe, data_file: Path):
    from tune.recipe import DataSection

    return DataSection.model_validate(recipe.data.model_dump() | {"train": str(data_file), "eval": None,
                                                                  "eval_fraction": 0.0})


def evaluate_file(model_dir: Path, data_file: Path) -> dict:
    """The classification report of a run on a labelled file (see tune.metrics)."""
    from tune.data.classification import label_ids, read_labelled
    from tune.metrics import classification_report

    model, tokenizer, names, recipe = load_run(model_dir)
    data = _data_section(recipe, data_file)
    rows = read_labelled(data, data.train, "--data", Path.cwd(), seed=0)
    truth = label_ids(rows, {name: i for i, name in enumerate(names)})
    probs = probabilities(model, tokenizer, [(text, pair) for _, text, pair, _ in rows], data.max_length)
    return classification_report(truth, probs.argmax(axis=1), names)


def predict_file(model_dir: Path, data_file: Path, out_file: Path) -> int:
    """Write each row with its predicted label and per-label probabilities: JSONL, or CSV by extension."""
    import csv
    import io

    from tune.data.classification import row_fields
    from tune.data.prepare import load_rows
    from tune.output import write_text

    suffix = Path(out_file).suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise TuneError(f"--out: {out_file}: write .jsonl or .csv")
    model, tokenizer, names, recipe = load_run(model_dir)
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
