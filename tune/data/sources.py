"""Reading rows from the places `data.train` / `data.eval` can name: JSONL, JSON and CSV files, or a
hub dataset id. Every problem names the file and line."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from tune.errors import DataError
from tune.paths import find_file

FILE_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Source:
    """One entry of data.train/data.eval: a local file (`path`) or a hub dataset (`hub_id`)."""

    spec: str
    path: Path | None = None
    hub_id: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.path else f"hub:{self.hub_id}"


def resolve_sources(spec: str | list[str], recipe_dir: Path | None, key: str) -> list[Source]:
    specs = [spec] if isinstance(spec, str) else list(spec)
    sources, problems = [], []
    for item in specs:
        found = find_file(item, recipe_dir)
        if found is not None:
            if found.suffix.lower() not in FILE_SUFFIXES:
                problems.append(f"{key}: {item}: unsupported file type '{found.suffix}'; use .jsonl, .json or .csv")
            else:
                sources.append(Source(item, path=found))
        elif _looks_like_hub_id(item):
            sources.append(Source(item, hub_id=item))
        else:
            problems.append(f"{key}: data file not found: {item} (looked beside the recipe and in {Path.cwd()})")
    if problems:
        raise DataError(problems)
    return sources


def _looks_like_hub_id(item: str) -> bool:
    return (item.count("/") == 1 and not item.startswith((".", "/", "~"))
            and not item.lower().endswith(FILE_SUFFIXES))


def read_rows(source: Source, split: str = "train", limit: int | None = None) -> list[dict]:
    """All rows (or the first `limit`) as dicts."""
    if source.hub_id:
        return _read_hub(source.hub_id, split, limit)
    path = source.path
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path, limit)
    elif suffix == ".json":
        rows = _read_json(path)[:limit]
    else:
        rows = _read_csv(path, limit)
    if not rows:
        raise DataError(f"{path}: no rows; the file is empty")
    return rows


def _read_jsonl(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.strip())
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                "each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "[]")
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    return data


def _read_csv(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more fields than the header has columns")
                rows.append(row)
                if limit and len(rows) >= limit:
                    break
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _read_hub(hub_id: str, split: str, limit: int | None) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, split=split)
    except Exception as exc:  # the hub raises many types; the user needs one line either way
        raise DataError(f"{hub_id}: could not load hub dataset split '{split}': {str(exc).splitlines()[0]} "
                        "(offline? point data.train at a local file)") from None
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [dict(row) for row in dataset]
