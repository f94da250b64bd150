"""Replay: the base model's own answers to everyday prompts, mixed into the training data so that an
adapter learning a narrow domain keeps what the model already did well. Training on a few dozen rows of
new facts at a high learning rate otherwise pulls every answer toward the domain (catastrophic
forgetting); rows whose targets are what the base already says cost nothing to fit and anchor the
rest of its behaviour. The answers are greedy, so a run's replay rows are reproducible."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tune.data.conversation import LengthReport, fit_length, tokenize
from tune.data.sources import numbered_json_lines
from tune.errors import DataError
from tune.paths import bundled_dir, find_file
from tune.recipe import DataSection

MAX_NEW_TOKENS = 256  # the longest replay answer; a cut-off answer is left out (it would teach stopping mid-sentence)


@dataclass
class Replay:
    rows: list[dict]  # {"prompt", "answer"}: written to replay.jsonl in the run dir
    examples: list[dict]  # tokenized like the user's rows
    note: str
    fingerprint: dict


def prompt_file(spec: str, recipe_dir: Path | None) -> Path:
    if spec == "general":
        return bundled_dir("data_templates") / "replay" / "general.jsonl"
    path = find_file(spec, recipe_dir)
    if path is None or not path.is_file():
        raise DataError(f"data.replay_prompts: no such file: {spec} (or use `general`, the bundled everyday prompts)")
    return path


def read_prompts(path: Path) -> list[str]:
    prompts = []
    for number, row in numbered_json_lines(path):
        if isinstance(row, json.JSONDecodeError):
            raise DataError(f"{path}:row {number}: not valid JSON ({row.msg})")
        text = next((row.get(k) for k in ("instruction", "prompt", "question") if isinstance(row, dict)
                     and isinstance(row.get(k), str) and row.get(k).strip()), None)
        if text is None:
            raise DataError(f"{path}:row {number}: needs an 'instruction' or 'prompt' for the base model to answer")
        prompts.append(text)
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def make_replay(answer, tokenizer, template: str, data: DataSection, train: list[dict], recipe_dir: Path | None,
                seed: int, report: LengthReport, wanted: int | None = None, limit: int | None = None) -> Replay:
    """data.replay rows per training row (or `wanted` rows), answered by the base model before any adapter:
    answer(conversations, max_new_tokens) -> [(text, finished)].

    Replay answers take the shape of the user's replies: an answer longer than twice their typical (90th
    percentile) reply is left out (or longer than `limit` tokens), so short-answer data replays short answers
    (the behaviour it puts at risk) and costs little to train on. Twice the wanted prompts are asked, so
    enough answers remain."""
    path = prompt_file(data.replay_prompts, recipe_dir)
    pool = read_prompts(path)
    wanted = wanted or max(1, round(len(train) * data.replay))
    limit = limit or reply_limit(train)
    prompts = random.Random(seed).sample(pool, min(2 * wanted, len(pool)))
    system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    answers = answer([system + [{"role": "user", "content": p}] for p in prompts], limit)
    rows = [{"prompt": p, "answer": text} for p, (text, finished) in zip(prompts, answers) if finished and text]
    rows = rows[:wanted]
    examples, trained = [], []
    for number, row in enumerate(rows, start=1):
        messages = system + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["answer"]}]
        example = fit_length(tokenize(messages, tokenizer, template, data.train_on, data.max_length), data.max_length, "drop",
                             f"replay row {number}", report)
        if example is not None:
            examples.append({"input_ids": example.input_ids, "labels": example.labels})
            trained.append(row)  # replay.jsonl holds what trains
    rows = trained
    short = f" (of {len(prompts)} asked, the rest ran past {limit} tokens)" if len(examples) < wanted else ""
    note = (f"replay: {len(examples)} base-model answers of at most {limit} tokens"
            + (f" mixed into {len(train)} training rows" if train else "") + short)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    fingerprint = {"prompts": str(path), "rows": len(examples), "max_new_tokens": limit, "sha256": digest}
    return Replay(rows, examples, note, fingerprint)


def reply_limit(train: list[dict]) -> int:
    """Twice the 90th-percentile count of trained tokens per example, within [32, MAX_NEW_TOKENS]."""
    counts = sorted(sum(label != -100 for label in row["labels"]) for row in train)
    typical = counts[min(len(counts) - 1, int(0.9 * len(counts)))] if counts else MAX_NEW_TOKENS
    return max(32, min(MAX_NEW_TOKENS, 2 * typical))
