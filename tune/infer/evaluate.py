"""`tune eval` for generative formats: loss and perplexity on the tokens a run trains on (the masked
targets), and optionally exact match of greedy answers against the reference replies."""

from __future__ import annotations

import math
from pathlib import Path

from tune.errors import TuneError


def evaluate(model_dir: Path, data_file: Path, exact_match: bool = False, max_new_tokens: int = 128,
             echo=None, granted: frozenset[str] = frozenset()) -> dict:
    """`granted`: what the command lets the run's recipe.yaml do (tune/models/run_dir.py refuse_ungranted)."""
    import torch

    from tune.data.conversation import LengthReport
    from tune.data.formats import FORMATS
    from tune.data.prepare import tokenize_rows
    from tune.data.rows import load_rows
    from tune.infer.generate import Sampling, generate, load_for_inference, messages_of
    from tune.models.run_dir import run_recipe
    from tune.recipe import DataSection

    recipe = run_recipe(model_dir, granted)
    if recipe is not None and recipe.train.method == "classify":
        from tune.infer.classify import evaluate_file

        return evaluate_file(model_dir, data_file, echo, granted)
    base = recipe.data.model_dump() if recipe else {"format": "instruction"}
    data = DataSection.model_validate(base | {"train": str(data_file), "eval": None, "eval_fraction": 0.0,
                                              "overlength": "truncate"})
    model, tokenizer = load_for_inference(model_dir, echo, granted)
    template = tokenizer.chat_template
    if template is None:
        raise TuneError(f"{model_dir}: the tokenizer has no chat template to render {data_file} with")
    rows = load_rows(data, data.train, "--data", Path.cwd(), seed=0)
    examples = tokenize_rows(data, rows, tokenizer, template, LengthReport())
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example["input_ids"]], device=model.device)
            labels = torch.tensor([example["labels"]], device=model.device)
            targets = int((labels[0, 1:] != -100).sum())
            if targets:
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
                total, count = total + float(loss) * targets, count + targets
    if not count:
        raise TuneError(f"{data_file}: no target tokens to evaluate")
    result = {"examples": len(examples), "target_tokens": count, "loss": total / count,
              "perplexity": math.exp(total / count)}
    if exact_match:
        if FORMATS[data.format].messages is None:
            raise TuneError("--exact-match needs instruction or chat rows, not raw text")
        hits = 0
        for where, row in rows:
            reference = FORMATS[data.format].messages(row, data.columns, data.system_prompt, where)[-1]["content"]
            answer = generate(model, tokenizer, messages_of(row, where), Sampling(max_new_tokens=max_new_tokens))
            hits += answer.strip() == reference.strip()
        result["exact_match"] = hits / len(rows)
    return result
