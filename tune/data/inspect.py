"""`tune data preview` and `tune data check`: what the trainer will see, before any training.
Preview shows each rendered example split into trained and masked spans; check reads every row and
reports counts, token-length percentiles, rows over max_length, empty and duplicate rows, role
distribution, and train/eval overlap."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tune.data.preference import BadPair
from tune.data.formats import FORMATS
from tune.data.overlap import shared_rows
from tune.data.rows import load_rows, train_eval_rows
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
    views = [(where, FORMATS[data.format].view(row, data, tokenizer, template, where)) for where, row in rows]
    return [Example(where, view.spans, view.tokens, view.trained) for where, view in views]


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_all(recipe: Recipe, recipe_dir: Path, tokenizer) -> CheckReport:
    data, report = recipe.data, CheckReport()
    template, label = resolve_template(data.template, tokenizer, recipe_dir)
    train, evaluation = train_eval_rows(data, recipe_dir, recipe.train.seed)
    splits = {"train": train, "eval": evaluation} if evaluation or data.eval is not None else {"train": train}
    report.lines.append(f"format {data.format}, template {label}, max_length {data.max_length}")
    for name, rows in splits.items():
        lengths, roles, seen, duplicates, over = [], Counter(), {}, 0, 0
        for where, row in rows:
            try:
                view = FORMATS[data.format].view(row, data, tokenizer, template, where)
            except TuneError as exc:
                skipped = data.drop_bad_pairs and isinstance(exc, BadPair)  # the run drops these pairs
                (report.warnings if skipped else report.errors).extend(exc.problems)
                continue
            roles.update(view.tally)  # roles of a conversation, or a row's label
            digest = hashlib.sha256(view.key.encode()).hexdigest()
            if digest in seen and seen[digest] != where:  # a weighted source repeats rows on purpose
                duplicates += 1
                report.warnings.append(f"{where}: duplicate of {seen[digest]}")
            seen.setdefault(digest, where)
            lengths.append(view.tokens)
            over += view.tokens > data.max_length and not view.chunked
        report.lines.append(_summary(name, len(rows), lengths, over, duplicates, roles, data.format))
        if lengths and over == len(lengths):  # never for chunked text: over stays 0
            report.errors.append(f"data.max_length: all {over} {name} examples are longer than {data.max_length} "
                                 "tokens; raise data.max_length")
    if "eval" in splits:  # run's identity; an eval mostly of train rows never gets here (train_eval_rows refuses it)
        shared = shared_rows(data, train, evaluation)
        report.lines.append(f"train/eval overlap: {len(shared)} identical examples")
        if shared:
            report.warnings.append(f"{len(shared)} eval examples also appear in train (e.g. eval {shared[0][0]} is "
                                   f"train {shared[0][1]}): eval loss will look too good")
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
