"""`tune eval --data FILE` for generative formats: loss and perplexity on the tokens a run trains on (the masked
targets), and with --generate the model's answers to every row's prompt, scored against the row's reply
(tune/infer/text_metrics.py) and saved row by row beside the scores in the model dir's eval/ folder."""

from __future__ import annotations

import math
from pathlib import Path

from tune.errors import TuneError

EVAL_DIR = "eval"


def evaluate(model_dir: Path, data_file: Path, answers: bool = False, sampling=None, echo=None,
             granted: frozenset[str] = frozenset(), batch_size: int = 16) -> dict:
    """`granted`: what the command lets the run's recipe.yaml do (tune/models/run_dir.py refuse_ungranted).
    `sampling`: tune.infer.generate.Sampling for the answers (greedy by default)."""
    import torch

    from tune.data.conversation import LengthReport
    from tune.data.prepare import tokenize_rows
    from tune.data.rows import load_rows
    from tune.infer.generate import load_for_inference
    from tune.models.run_dir import run_recipe
    from tune.recipe import DataSection

    recipe = run_recipe(model_dir, granted)
    if recipe is not None and recipe.train.method == "classify":
        from tune.infer.classify import evaluate_file

        return evaluate_file(model_dir, data_file, echo, granted)
    base = recipe.data.model_dump() if recipe else {"format": "instruction"}
    data = DataSection.model_validate(base | {"train": str(data_file), "eval": None, "eval_fraction": 0.0,
                                              "overlength": "truncate", "augment": None})
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
    if answers:
        result |= answer_rows(model, tokenizer, data, rows, sampling, batch_size, Path(model_dir), Path(data_file))
    return result


def answer_rows(model, tokenizer, data, rows: list, sampling, batch_size: int, model_dir: Path, data_file: Path) -> dict:
    """Generate an answer to each row's prompt, score them, and write eval/generation-<file>.json (the scores,
    the settings) and eval/answers-<file>.jsonl (prompt, reference, answer and scores per row)."""
    from dataclasses import asdict

    from tune.data.formats import FORMATS
    from tune.infer.generate import Sampling, generate_batch
    from tune.infer.text_metrics import scores
    import json

    from tune.output import write_json, write_text

    if FORMATS[data.format].messages is None:
        raise TuneError(f"--generate needs instruction or chat rows with a reference reply, not {data.format} rows")
    sampling = sampling or Sampling()
    prompts, references = [], []
    for where, row in rows:
        messages = FORMATS[data.format].messages(row, data.columns, data.system_prompt, where)
        if messages[-1]["role"] != "assistant":
            raise TuneError(f"{where}: the row ends without an assistant reply to compare the answer with")
        prompts.append(messages[:-1])
        references.append(messages[-1]["content"])
    generated = [text for text, _ in generate_batch(model, tokenizer, prompts, sampling.max_new_tokens, batch_size,
                                                    sampling)]
    corpus, per_row = scores(generated, references)
    folder = model_dir / EVAL_DIR
    folder.mkdir(exist_ok=True)
    stem = data_file.stem
    report = {"data": str(data_file), "examples": len(rows), "sampling": asdict(sampling), "scores": corpus}
    write_json(folder / f"generation-{stem}.json", report)
    write_text(folder / f"answers-{stem}.jsonl", "".join(
        json.dumps({"prompt": prompt[-1]["content"], "reference": reference, "answer": answer, **row_score},
                   ensure_ascii=False) + "\n"
        for prompt, reference, answer, row_score in zip(prompts, references, generated, per_row)))
    return {"generation": corpus, "written": [str(folder / f"generation-{stem}.json"),
                                              str(folder / f"answers-{stem}.jsonl")]}
