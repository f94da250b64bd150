"""Rows that are in both train and eval, by one identity for `tune data check` (which counts them) and for
every run (train_eval_rows refuses an eval made mostly of training rows unless data.allow_eval_overlap).
`train: org/ds` beside `eval: org/ds` once read the train split twice and reported the training rows' loss
as held-out loss."""

from __future__ import annotations

import hashlib
import json

from tune.errors import DataError
from tune.recipe import FORMAT_FIELDS, DataSection

MOSTLY = 0.5  # share of the eval rows at which it measures training rows rather than held-out ones


def row_key(row: dict, data: DataSection) -> bytes:
    """A row by the fields its format reads (through data.columns), so an id column that differs between
    splits does not hide a copy; a row that holds none of them (e.g. sharegpt `conversations`), by all of it."""
    names = {data.columns.get(name, name) for name in FORMAT_FIELDS[data.format]}
    read = {key: value for key, value in row.items() if key in names} or row
    return hashlib.sha256(json.dumps(read, sort_keys=True, ensure_ascii=False, default=str).encode()).digest()


def shared_rows(data: DataSection, train: list[tuple[str, dict]],
                evaluation: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """(eval where, train where) for every eval row that is also a train row."""
    trained: dict[bytes, str] = {}
    for where, row in train:
        trained.setdefault(row_key(row, data), where)
    return [(where, trained[key]) for where, row in evaluation if (key := row_key(row, data)) in trained]


def refuse_trained_eval(data: DataSection, train: list[tuple[str, dict]], evaluation: list[tuple[str, dict]]) -> None:
    """Stop when at least half of data.eval's rows are train rows (fewer: `tune data check` warns)."""
    if data.allow_eval_overlap:
        return
    shared = shared_rows(data, train, evaluation)
    if evaluation and len(shared) >= MOSTLY * len(evaluation):
        raise DataError(f"data.eval: {len(shared)} of {len(evaluation)} eval rows are also train rows (e.g. eval "
                        f"{shared[0][0]} is train {shared[0][1]}), so eval loss would measure training data; give "
                        "data.eval rows of its own: another file, or a split of its own ({path: ..., split: test}); or "
                        "set data.allow_eval_overlap: true")
