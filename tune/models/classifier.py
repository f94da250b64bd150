"""A sequence classifier: the base model with a fresh label head (for training), or a finished
`train.method: classify` run (base + adapter + head, for `tune eval` and `tune predict`, which live in
tune/infer/classify.py), and the batched forward pass both use. torch/transformers/peft are imported inside the functions."""

from __future__ import annotations

import json
from pathlib import Path

from tune.errors import TuneError
from tune.recipe import ModelSection

LABELS_FILE = "labels.json"


def load_base(model: ModelSection, source: str, names: list[str], tokenizer, gradient_checkpointing: bool = False):
    """(model, new module names): AutoModelForSequenceClassification with one output per label, the
    label names in its config, and the tokenizer's pad id, which decoder LMs need to find each row's
    last real token. New modules are the ones the checkpoint did not hold (the head)."""
    from transformers import AutoModelForSequenceClassification

    from tune.models.load import load_arguments, prepare_quantized
    from tune.models.resolve import not_found

    kwargs = load_arguments(model, source)
    kwargs |= {"num_labels": len(names), "id2label": dict(enumerate(names)),
               "label2id": {name: i for i, name in enumerate(names)}, "pad_token_id": tokenizer.pad_token_id}
    try:
        base, info = AutoModelForSequenceClassification.from_pretrained(source, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise TuneError(not_found(model.name, exc)) from None
    base.config.pad_token_id = tokenizer.pad_token_id  # some configs ignore the load-time override
    base = prepare_quantized(base, model, gradient_checkpointing)
    new = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", ())})
    return base, new


def read_labels(model_dir: Path) -> list[str]:
    path = Path(model_dir) / LABELS_FILE
    if not path.is_file():
        raise TuneError(f"{model_dir}: no {LABELS_FILE}; is this the output dir of a `train.method: classify` run?")
    return json.loads(path.read_text(encoding="utf-8"))["labels"]


def load_run(model_dir: Path, echo=None, granted: frozenset[str] | None = frozenset()):
    """(model, tokenizer, label names, recipe) of a finished classify run, ready for inference. `granted`:
    what the command lets the run's recipe.yaml do (tune/models/run_dir.py refuse_ungranted)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tune.models.resolve import model_source
    from tune.models.run_dir import check_safetensors, run_recipe

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").is_file():
        raise TuneError(f"{model_dir}: not a finished run (no adapter_config.json)")
    recipe = run_recipe(model_dir, granted)
    if recipe is None:
        raise TuneError(f"{model_dir}: adapter without recipe.yaml, so its base model is unknown")
    check_safetensors(model_dir / "adapter_model.safetensors")
    names = read_labels(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base, _ = load_base(recipe.model, model_source(recipe.model, echo), names, tokenizer)
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
