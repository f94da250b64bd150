"""The `unpaired` format, for KTO: {prompt, completion, label, system?} per row: one reply and whether it
is desirable (true) or not (false), no pair needed. Rows are tokenized as SFT and the preference pairs are
(the same chat template, the same prompt/reply boundary) and fitted to data.max_length by data.overlength."""

from __future__ import annotations

import random
from pathlib import Path

from tune.data.conversation import LengthReport, fit_length, tokenize
from tune.data.examples import prepare_examples
from tune.data.preference import as_messages
from tune.data.rows import Prepared
from tune.errors import DataError, TuneError
from tune.recipe import DataSection

LABELS = {True: True, False: False, 1: True, 0: False, "true": True, "false": False, "1": True, "0": False,
          "yes": True, "no": False, "desirable": True, "undesirable": False}


def row_to_example(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> dict:
    """{"prompt": messages, "completion": [assistant message], "label": bool}."""
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


def prepare_unpaired(data: DataSection, tokenizer, template: str, recipe_dir: Path | None, seed: int) -> Prepared:
    """{prompt_ids, completion_ids, label} per row: the columns TRL's KTO collator reads."""
    def examples(rows, report: LengthReport) -> list[dict]:
        kept = []
        for where, row in rows:
            example = row_to_example(row, data.columns, data.system_prompt, where)
            tokens = tokenize(example["prompt"] + example["completion"], tokenizer, template, "last_assistant",
                              data.max_length, where)
            tokens = fit_length(tokens, data.max_length, data.overlength, where, report)
            if tokens is not None:
                cut = tokens.prompt_tokens
                kept.append({"prompt_ids": tokens.input_ids[:cut], "completion_ids": tokens.input_ids[cut:],
                             "label": example["label"]})
        return kept

    prepared = prepare_examples(data, template, recipe_dir, seed, examples, "rows",
                                lambda row: [row["prompt_ids"], row["completion_ids"], row["label"]])
    if not prepared.train:
        raise TuneError("data.train: no rows")
    # TRL's KTO reads rows in order (its KL term pairs neighbours): a file sorted by label would otherwise
    # train on one kind for half of every epoch
    random.Random(seed).shuffle(prepared.train)
    kinds = {row["label"] for row in prepared.train}
    if kinds != {True, False}:
        have = "desirable" if True in kinds else "undesirable"
        raise TuneError(f"data.train: every row is {have}; KTO needs both desirable (label true) and undesirable "
                        "(label false) completions")
    return prepared
