"""The `unpaired` format, for KTO: {prompt, completion, label, system?} per row: one reply and whether it
is desirable (true) or not (false), no pair needed. Rows reach TRL as chat messages and are rendered with
the run's chat template."""

from __future__ import annotations

import random
from pathlib import Path

from tune.data.preference import as_messages
from tune.data.rows import sha256, train_eval_rows
from tune.errors import DataError, TuneError
from tune.recipe import DataSection

LABELS = {True: True, False: False, 1: True, 0: False, "true": True, "false": False, "1": True, "0": False,
          "yes": True, "no": False, "desirable": True, "undesirable": False}


def row_to_example(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> dict:
    """{"prompt": messages, "completion": [assistant message], "label": bool}, as TRL's KTOTrainer reads it."""
    names = {field: columns.get(field, field) for field in ("prompt", "completion", "label")}
    missing = [name for name in names.values() if name not in row]
    if missing:
        raise DataError(f"{where}: missing column{'s' * (len(missing) > 1)} {', '.join(missing)}; row has "
                        f"{sorted(row)} (map yours with data.columns.prompt / completion / label)")
    prompt = as_messages(row[names["prompt"]], "user", f"{where}: prompt")
    if not prompt or prompt[-1]["role"] != "user":
        raise DataError(f"{where}: prompt must be text or messages ending with a user message")
    system = row.get(columns.get("system", "system")) or system_prompt
    if system and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": str(system)})
    reply = as_messages(row[names["completion"]], "assistant", f"{where}: completion")
    if len(reply) != 1 or reply[0]["role"] != "assistant" or not reply[0]["content"].strip():
        raise DataError(f"{where}: completion must be one non-empty assistant reply")
    raw = row[names["label"]]
    label = None if isinstance(raw, (list, dict, float)) else LABELS.get(raw.strip().lower() if isinstance(raw, str) else raw)
    if label is None:
        raise DataError(f"{where}: label must be true or false (desirable or not), got {raw!r}")
    return {"prompt": prompt, "completion": reply, "label": label}


def row_to_messages(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> list[dict]:
    example = row_to_example(row, columns, system_prompt, where)
    return example["prompt"] + example["completion"]


def prepare_unpaired(data: DataSection, recipe_dir: Path | None, seed: int) -> tuple[list[dict], list[dict], dict]:
    fingerprint: dict = {"sources": []}

    train_rows, eval_rows = train_eval_rows(data, recipe_dir, seed, fingerprint)
    train, evaluation = [[row_to_example(row, data.columns, data.system_prompt, where) for where, row in rows]
                         for rows in (train_rows, eval_rows)]
    if not train:
        raise TuneError("data.train: no rows")
    # TRL's KTO reads rows in order (its KL term pairs neighbours): a file sorted by label would otherwise
    # train on one kind for half of every epoch
    random.Random(seed).shuffle(train)
    kinds = {row["label"] for row in train}
    if kinds != {True, False}:
        have = "desirable" if True in kinds else "undesirable"
        raise TuneError(f"data.train: every row is {have}; KTO needs both desirable (label true) and undesirable "
                        "(label false) completions")
    fingerprint.update(train_examples=len(train), eval_examples=len(evaluation),
                       rows_sha256=sha256(repr(train + evaluation).encode()))
    return train, evaluation, fingerprint
