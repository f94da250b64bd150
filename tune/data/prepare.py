"""From `data:` to the token rows a trainer takes: read every source (weighted), format and tokenize
each row, apply the length policy, split off eval, and fingerprint what was read."""

from __future__ import annotations

from pathlib import Path

from tune.data import completion
from tune.data.conversation import LengthReport, fit_length, tokenize
from tune.data.examples import prepare_examples
from tune.data.formats import FORMATS
from tune.data.rows import Prepared
from tune.data.sources import read_rows, resolve_sources
from tune.data.templates import check_template_name
from tune.errors import TuneError
from tune.recipe import DataSection

PEEK_ROWS = 5


def check_row(data: DataSection, row: dict, where: str) -> None:
    """Raise DataError if the row cannot be used by data.format."""
    FORMATS[data.format].check(row, data, where)


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
    from tune.data.probes import load_probe_sets

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
    if data.augment is not None and data.augment.rows:
        from tune.data.augment_rows import read_rows as read_reviewed

        try:
            read_reviewed(data.augment.rows, recipe_dir)
        except TuneError as exc:
            problems.extend(exc.problems)
    return problems


def tokenize_rows(data: DataSection, rows, tokenizer, template: str, report: LengthReport) -> list[dict]:
    if FORMATS[data.format].messages is None:  # raw text: chunked into blocks, every token trained
        texts = [completion.row_text(row, data.columns, where) for where, row in rows]
        return completion.chunk(texts, tokenizer, data.max_length)
    examples = []
    for where, row in rows:
        messages = FORMATS[data.format].messages(row, data.columns, data.system_prompt, where)
        example = fit_length(tokenize(messages, tokenizer, template, data.train_on, data.max_length, where),
                             data.max_length, data.overlength, where, report)
        if example is not None:
            examples.append({"input_ids": example.input_ids, "labels": example.labels})
    return examples


def prepare(data: DataSection, tokenizer, template: str, recipe_dir: Path | None, seed: int) -> Prepared:
    prepared = prepare_examples(data, template, recipe_dir, seed,
                                lambda rows, report: tokenize_rows(data, rows, tokenizer, template, report),
                                "examples", lambda row: row["input_ids"])
    if not prepared.train:
        raise TuneError("data.train: no training examples (is the text shorter than 16 tokens?)")
    return prepared
