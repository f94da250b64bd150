"""From `data:` to the token rows a trainer takes: read every source (weighted), format and tokenize
each row, apply the length policy, split off eval, and fingerprint what was read."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from tune.data import chat, classification, completion, instruction, preference
from tune.data.conversation import LengthReport, fit_length, tokenize
from tune.data.sources import Source, read_rows, resolve_sources
from tune.data.templates import check_template_name
from tune.errors import TuneError
from tune.recipe import DataSection

PEEK_ROWS = 5
MESSAGE_FORMATS = {"instruction": instruction.row_to_messages, "chat": chat.row_to_messages,
                   "preference": preference.row_to_messages}  # prompt + chosen, for preview and data check


def check_row(data: DataSection, row: dict, where: str) -> None:
    """Raise DataError if the row cannot be used by data.format."""
    if data.format == "completion":
        completion.row_text(row, data.columns, where)
    elif data.format == "classification":
        classification.check_row(row, data.columns, data.labels, where)
    elif data.format == "preference" and data.drop_bad_pairs:
        try:  # the run drops bad pairs, so only a malformed row is a problem
            preference.row_to_pair(row, data.columns, data.system_prompt, where)
        except preference.BadPair:
            pass
    else:
        MESSAGE_FORMATS[data.format](row, data.columns, data.system_prompt, where)


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
                for number, row in enumerate(read_rows(source, data.split, PEEK_ROWS), start=1):
                    check_row(data, row, f"{source}:row {number}")
            except TuneError as exc:
                problems.extend(exc.problems)
    return problems + _check_probes_and_replay(data, recipe_dir)


def _check_probes_and_replay(data: DataSection, recipe_dir: Path | None) -> list[str]:
    from tune.data.replay import prompt_file, read_prompts
    from tune.probes import load_probe_sets

    problems = []
    try:
        load_probe_sets(data.probes, recipe_dir)
    except TuneError as exc:
        problems.extend(exc.problems)
    if data.replay:
        try:
            read_prompts(prompt_file(data.replay_prompts, recipe_dir))
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


def load_rows(data: DataSection, spec, key: str, recipe_dir: Path | None, seed: int,
              fingerprint: dict | None = None) -> list[tuple[str, dict]]:
    """(where, row) for every row of every source, with source weights applied (seeded)."""
    rows = []
    for source in resolve_sources(spec, recipe_dir, key):
        found = read_rows(source, data.split, revision=data.revision)
        if fingerprint is not None:
            fingerprint["sources"].append(_describe_source(source, len(found)))
        numbered = [(f"{source}:row {n}", row) for n, row in enumerate(found, start=1)]
        rows += _weighted(numbered, source.weight, seed)
    return rows


def _weighted(rows: list, weight: float, seed: int) -> list:
    whole, part = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(rows, round(len(rows) * part)) if part else []
    return rows * whole + extra


def tokenize_rows(data: DataSection, rows, tokenizer, template: str, report: LengthReport) -> list[dict]:
    if data.format == "completion":
        texts = [completion.row_text(row, data.columns, where) for where, row in rows]
        return completion.chunk(texts, tokenizer, data.max_length)
    examples = []
    for where, row in rows:
        messages = MESSAGE_FORMATS[data.format](row, data.columns, data.system_prompt, where)
        example = fit_length(tokenize(messages, tokenizer, template, data.train_on),
                             data.max_length, data.overlength, where, report)
        if example is not None:
            examples.append({"input_ids": example.input_ids, "labels": example.labels})
    return examples


def prepare(data: DataSection, tokenizer, template: str, recipe_dir: Path | None, seed: int) -> Prepared:
    report = LengthReport()
    fingerprint = {"sources": [], "template_sha256": _sha(template.encode())}
    train_rows = load_rows(data, data.train, "data.train", recipe_dir, seed, fingerprint)
    train = tokenize_rows(data, train_rows, tokenizer, template, report)
    if data.eval is not None:
        eval_rows = load_rows(data, data.eval, "data.eval", recipe_dir, seed, fingerprint)
        evaluation = tokenize_rows(data, eval_rows, tokenizer, template, report)
    else:
        train, evaluation = split_off(train, data.eval_fraction, seed)
    total = report.kept + report.dropped
    if total and len(report.rows_over) == total:
        raise TuneError(f"data.max_length: all {total} examples are longer than {data.max_length} tokens "
                        f"(longest {report.longest}); raise data.max_length")
    if not train:
        raise TuneError("data.train: no training examples (is the text shorter than 16 tokens?)")
    fingerprint["train_examples"] = len(train)
    fingerprint["eval_examples"] = len(evaluation)
    fingerprint["tokens_sha256"] = _sha(repr([row["input_ids"] for row in train + evaluation]).encode())
    notes = []
    if report.truncated or report.dropped:
        notes.append(f"{report.truncated} examples truncated and {report.dropped} dropped "
                     f"(over data.max_length={data.max_length}; longest {report.longest} tokens)")
    return Prepared(train, evaluation, fingerprint, report, notes)


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded share of the items, the rest in their original order."""
    if fraction <= 0:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(items) * fraction))
    return [items[i] for i in sorted(order[cut:])], [items[i] for i in order[:cut]]


def _describe_source(source: Source, rows: int) -> dict:
    described = {"spec": source.spec, "rows": rows, "weight": source.weight}
    if source.hub_id:
        return described | {"hub_id": source.hub_id}
    path = source.path or source.saved
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return described | {"path": str(path), "bytes": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
