"""`tune data preview` and `tune data check`: what the trainer will see, before any training.
Preview shows each rendered example split into trained and masked spans; check reads every row and
reports counts, token-length percentiles, rows over max_length, empty and duplicate rows, role
distribution, and train/eval overlap."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tune.data.conversation import tokenize
from tune.data.preference import BadPair
from tune.data.formats import FORMATS
from tune.data.rows import load_rows, split_off
from tune.data.templates import resolve_template
from tune.errors import TuneError
from tune.recipe import Recipe


@dataclass
class Example:
    where: str
    spans: list[tuple[str, bool]]  # (text, trained?)
    tokens: int
    trained: int


def preview(recipe: Recipe, recipe_dir: Path, count: int, tokenizer) -> list[Example]:
    data = recipe.data
    template, _ = resolve_template(data.template, tokenizer, recipe_dir)
    rows = load_rows(data, data.train, "data.train", recipe_dir, recipe.train.seed)[:count]
    examples = []
    if data.format == "classification":  # the model sees the text (pair) as tokenized; the label is shown after it
        from tune.data.classification import row_fields

        for where, row in rows:
            text, pair, label_name = row_fields(row, data.columns, where)
            ids = tokenizer(text, pair)["input_ids"]
            examples.append(Example(where, [(tokenizer.decode(ids), False), (f" -> {label_name}", True)], len(ids), 0))
        return examples
    if data.format == "completion":
        from tune.data.completion import chunk, row_text

        for where, row in rows:
            ids = chunk([row_text(row, data.columns, where)], tokenizer, 10**9)[0]["input_ids"]
            examples.append(Example(where, [(tokenizer.decode(ids), True)], len(ids), len(ids)))
        return examples
    for where, row in rows:
        messages = FORMATS[data.format].messages(row, data.columns, data.system_prompt, where)
        example = tokenize(messages, tokenizer, template, data.train_on)
        spans, start = [], 0
        for i in range(1, len(example.labels) + 1):
            if i == len(example.labels) or (example.labels[i] != -100) != (example.labels[start] != -100):
                spans.append((tokenizer.decode(example.input_ids[start:i]), example.labels[start] != -100))
                start = i
        trained = sum(label != -100 for label in example.labels)
        examples.append(Example(where, spans, len(example.input_ids), trained))
    return examples


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_all(recipe: Recipe, recipe_dir: Path, tokenizer) -> CheckReport:
    data, report = recipe.data, CheckReport()
    template, label = resolve_template(data.template, tokenizer, recipe_dir)
    splits = {"train": load_rows(data, data.train, "data.train", recipe_dir, recipe.train.seed)}
    if data.eval is not None:
        splits["eval"] = load_rows(data, data.eval, "data.eval", recipe_dir, recipe.train.seed)
    elif data.eval_fraction > 0:
        splits["train"], splits["eval"] = split_off(splits["train"], data.eval_fraction, recipe.train.seed)
    report.lines.append(f"format {data.format}, template {label}, max_length {data.max_length}")
    digests: dict[str, set] = {}
    for name, rows in splits.items():
        lengths, roles, seen, duplicates, over = [], Counter(), {}, 0, 0
        for where, row in rows:
            try:
                if data.format == "completion":
                    from tune.data.completion import row_text

                    text = row_text(row, data.columns, where)
                    if not text.strip():
                        raise TuneError(f"{where}: empty text")
                    length, key = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1, text
                elif data.format == "classification":
                    from tune.data.classification import check_row, row_fields

                    check_row(row, data.columns, data.labels, where)
                    text, pair, label_name = row_fields(row, data.columns, where)
                    roles[label_name] += 1  # for this format the summary counts labels instead of roles
                    length, key = len(tokenizer(text, pair)["input_ids"]), json.dumps([text, pair, label_name])
                else:
                    messages = FORMATS[data.format].messages(row, data.columns, data.system_prompt, where)
                    roles.update(message["role"] for message in messages)
                    length = len(tokenize(messages, tokenizer, template, data.train_on).input_ids)
                    key = json.dumps(messages, sort_keys=True)
            except TuneError as exc:
                skipped = data.drop_bad_pairs and isinstance(exc, BadPair)  # the run drops these pairs
                (report.warnings if skipped else report.errors).extend(exc.problems)
                continue
            digest = hashlib.sha256(key.encode()).hexdigest()
            if digest in seen and seen[digest] != where:  # a weighted source repeats rows on purpose
                duplicates += 1
                report.warnings.append(f"{where}: duplicate of {seen[digest]}")
            seen.setdefault(digest, where)
            lengths.append(length)
            over += length > data.max_length and data.format != "completion"  # completion text is chunked
        digests[name] = set(seen)
        report.lines.append(_summary(name, len(rows), lengths, over, duplicates, roles, data.format))
        if lengths and over == len(lengths) and data.format != "completion":
            report.errors.append(f"data.max_length: all {over} {name} examples are longer than {data.max_length} "
                                 "tokens; raise data.max_length")
    if "eval" in digests:
        shared = len(digests["train"] & digests["eval"])
        report.lines.append(f"train/eval overlap: {shared} identical examples")
        if shared:
            report.warnings.append(f"{shared} eval examples also appear in train: eval loss will look too good")
    return report


def _summary(name, rows, lengths, over, duplicates, roles, data_format) -> str:
    if not lengths:
        return f"{name}: {rows} rows, none usable"
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    line = (f"{name}: {rows} rows; tokens p50 {pick(0.5)}, p90 {pick(0.9)}, p99 {pick(0.99)}, max {ordered[-1]}; "
            f"{over} over max_length; {duplicates} duplicates")
    if data_format != "completion":
        line += ("; labels " if data_format == "classification" else "; roles ") + ", ".join(f"{role} {count}" for role, count in sorted(roles.items()))
    return line
