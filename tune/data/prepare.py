"""From `data:` to the token rows a trainer takes: read every source, format and tokenize each row,
apply the length policy, split off eval, and fingerprint what was read."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from tune.data.instruction import LengthReport, fit_length, row_to_messages, tokenize
from tune.data.sources import Source, read_rows, resolve_sources
from tune.data.templates import check_template_name
from tune.errors import DataError, TuneError
from tune.recipe import DataSection

PEEK_ROWS = 5


def check(data: DataSection, recipe_dir: Path | None) -> list[str]:
    """Cheap checks for `tune validate`: files exist and their first rows have the needed columns."""
    problems = []
    problem = check_template_name(data.template, recipe_dir)
    if problem:
        problems.append(problem)
    for key, spec in (("data.train", data.train), ("data.eval", data.eval)):
        if spec is None:
            continue
        try:
            sources = resolve_sources(spec, recipe_dir, key)
        except TuneError as exc:
            problems.extend(exc.problems)
            continue
        for source in sources:
            if source.hub_id:
                continue  # not fetched by validate: it may be offline
            try:
                for number, row in enumerate(read_rows(source, limit=PEEK_ROWS), start=1):
                    row_to_messages(row, data.columns, data.system_prompt, f"{source}:row {number}")
            except TuneError as exc:
                problems.extend(exc.problems)
    return problems


@dataclass
class Prepared:
    train: list[dict]
    eval: list[dict]
    fingerprint: dict
    report: LengthReport
    notes: list[str] = field(default_factory=list)


def prepare(data: DataSection, tokenizer, template: str, recipe_dir: Path | None, seed: int) -> Prepared:
    report = LengthReport()
    fingerprint = {"sources": [], "template_sha256": _sha(template.encode())}
    train = _load(data, data.train, "data.train", tokenizer, template, recipe_dir, report, fingerprint)
    if data.eval is not None:
        evaluation = _load(data, data.eval, "data.eval", tokenizer, template, recipe_dir, report, fingerprint)
    elif data.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        cut = max(1, round(len(train) * data.eval_fraction))
        evaluation = [train[i] for i in order[:cut]]
        train = [train[i] for i in sorted(order[cut:])]
    else:
        evaluation = []
    total = report.kept + report.dropped
    if total and len(report.rows_over) == total:
        raise DataError(f"data.max_length: all {total} examples are longer than {data.max_length} tokens "
                        f"(longest {report.longest}); raise data.max_length")
    fingerprint["train_examples"] = len(train)
    fingerprint["eval_examples"] = len(evaluation)
    fingerprint["tokens_sha256"] = _sha(repr([row["input_ids"] for row in train + evaluation]).encode())
    notes = []
    if report.truncated or report.dropped:
        notes.append(f"{report.truncated} examples truncated and {report.dropped} dropped "
                     f"(over data.max_length={data.max_length}; longest {report.longest} tokens)")
    return Prepared(train, evaluation, fingerprint, report, notes)


def _load(data, spec, key, tokenizer, template, recipe_dir, report, fingerprint) -> list[dict]:
    examples = []
    for source in resolve_sources(spec, recipe_dir, key):
        rows = read_rows(source, split=data.split)
        fingerprint["sources"].append(_describe_source(source, len(rows)))
        for number, row in enumerate(rows, start=1):
            where = f"{source}:row {number}"
            messages = row_to_messages(row, data.columns, data.system_prompt, where)
            example = fit_length(tokenize(messages, tokenizer, template, data.train_on),
                                 data.max_length, data.overlength, where, report)
            if example is not None:
                examples.append({"input_ids": example.input_ids, "labels": example.labels})
    return examples


def _describe_source(source: Source, rows: int) -> dict:
    if source.hub_id:
        return {"hub_id": source.hub_id, "rows": rows}
    return {"path": str(source.path), "rows": rows, "bytes": source.path.stat().st_size,
            "sha256": _sha(source.path.read_bytes())}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
