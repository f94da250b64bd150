"""Reading rows from the places `data.train` / `data.eval` can name: JSONL, JSON, CSV, Parquet and TXT
files, globs and folders of them, folders saved by `datasets`, or hub dataset ids. Every problem names
the file and line."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from tune.errors import DataError
from tune.paths import find_file

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class Source:
    """One place rows come from: a file (`path`), a folder saved by `datasets` (`saved`), or a hub id; `split`
    and `revision` are the source's own (a {path, split, revision} entry), else data.split/data.revision."""

    spec: str
    path: Path | None = None
    saved: Path | None = None
    hub_id: str | None = None
    weight: float = 1.0
    split: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        name = str(self.path or self.saved) if (self.path or self.saved) else f"hub:{self.hub_id}"
        return f"{name}[{self.split}]" if self.split else name  # train and test rows of one folder stay apart


def resolve_sources(spec, recipe_dir: Path | None, key: str) -> list[Source]:
    """Expand data.train/data.eval (a string, or a list of strings and {path, weight, split, revision}) into
    Sources."""
    items = [spec] if isinstance(spec, str) else list(spec)
    sources, problems = [], []
    for item in items:
        name, own = (item, {}) if isinstance(item, str) else (
            item.path, {"weight": item.weight, "split": item.split, "revision": item.revision})
        try:
            sources += [Source(name, **own, **found) for found in _expand(name, recipe_dir, key)]
        except DataError as exc:
            problems += exc.problems
    if problems:
        raise DataError(problems)
    return sources


def _expand(name: str, recipe_dir: Path | None, key: str) -> list[dict]:
    if any(char in name for char in "*?["):
        bases = [recipe_dir, Path.cwd()] if recipe_dir and not Path(name).is_absolute() else [Path("/")]
        for base in bases:
            matches = sorted(p for p in base.glob(name.lstrip("/")) if p.suffix.lower() in FILE_SUFFIXES)
            if matches:
                return [{"path": match.resolve()} for match in matches]
        raise DataError(f"{key}: no data files match {name}")
    found = find_file(name, recipe_dir)
    if found is not None and found.is_dir():
        if (found / "dataset_info.json").exists() or (found / "dataset_dict.json").exists():
            return [{"saved": found}]
        files = sorted(p for p in found.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise DataError(f"{key}: {name}: the folder holds no {', '.join(FILE_SUFFIXES)} files")
        return [{"path": path} for path in files]
    if found is not None:
        if found.suffix.lower() not in FILE_SUFFIXES:
            raise DataError(f"{key}: {name}: unsupported file type '{found.suffix}'; use "
                            f"{', '.join(FILE_SUFFIXES)}, a folder, or a hub dataset id")
        return [{"path": found}]
    if _looks_like_hub_id(name):
        return [{"hub_id": name}]
    raise DataError(f"{key}: data file not found: {name} (looked beside the recipe and in {Path.cwd()})")


def _looks_like_hub_id(item: str) -> bool:
    return (item.count("/") == 1 and not item.startswith((".", "/", "~"))
            and not item.lower().endswith(FILE_SUFFIXES))


def read_rows(source: Source, split: str = "train", limit: int | None = None, revision: str | None = None) -> list[dict]:
    """All rows (or the first `limit`) as dicts. `split` and `revision` serve a source that names none."""
    if source.hub_id or source.saved:
        return _read_dataset(source, source.split or split, limit, source.revision or revision)
    path = source.path
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path, limit)
    elif suffix == ".json":
        rows = _read_json(path)[:limit]
    elif suffix == ".parquet":
        rows = _read_parquet(path, limit)
    elif suffix == ".txt":
        text = _decoded(path.read_bytes(), path)
        rows = [{"text": text}] if text.strip() else []
    else:
        rows = _read_csv(path, limit)
    if not rows:
        raise DataError(f"{path}: no rows; the file is empty")
    return rows


def numbered_json_lines(path: Path):
    """(line number, the parsed line or its json.JSONDecodeError) for each non-blank line of a small JSONL
    file tune reads beside the data (probes, replay prompts, reviewed rows); the caller words the error."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, exc


def _read_jsonl(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with open(path, "rb") as handle:  # decoded line by line: a bad byte is reported with its line
        for number, raw in enumerate(handle, start=1):
            line = _decoded(raw, path, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line.strip(), object_pairs_hook=_unique_keys)
            except DuplicateKey as exc:
                raise DataError(f"{path}:{number}: {exc}") from None
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
    text = _decoded(path.read_bytes(), path)
    try:
        data = json.loads(text or "[]", object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise DataError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    return data


def _read_csv(path: Path, limit: int | None) -> list[dict]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:  # streamed: a preview reads only its rows
            return _csv_rows(path, csv.DictReader(handle), limit)
    except UnicodeDecodeError:
        _decoded(path.read_bytes(), path)  # names the line of the first byte that is not UTF-8
        raise


def _csv_rows(path: Path, reader, limit: int | None) -> list[dict]:
    rows = []
    try:
        named = [name for name in reader.fieldnames or [] if name]  # Excel leaves empty trailing columns
        repeated = sorted({name for name in named if named.count(name) > 1})
        if repeated:
            raise DataError(f"{path}:1: column '{repeated[0]}' appears twice in the header (the last would "
                            "silently win); rename one")
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more fields than the header has columns")
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return rows


class DuplicateKey(ValueError):
    """A JSON object that names one key twice: json would silently keep the last value."""


def _unique_keys(pairs: list[tuple]) -> dict:
    found = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"key '{key}' appears twice in one object (the last value would silently win); "
                               "remove one")
        found[key] = value
    return found


def _decoded(data: bytes, path: Path, line: int | None = None) -> str:
    """UTF-8 text; a byte-order mark (Excel's CSV export writes one) is dropped, not read as part of the
    first column's name. A byte that is not UTF-8 is one line naming the file and line."""
    try:
        return data.decode("utf-8-sig" if line in (None, 1) else "utf-8")
    except UnicodeDecodeError as exc:
        at = line if line is not None else data[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{at}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None


def _read_parquet(path: Path, limit: int | None) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return table.slice(0, limit).to_pylist() if limit else table.to_pylist()


def _read_dataset(source: Source, split: str, limit: int | None, revision: str | None) -> list[dict]:
    import datasets

    try:
        if source.saved:
            dataset = datasets.load_from_disk(str(source.saved))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    where = "this source's split" if source.split else "data.split"
                    raise DataError(f"{source}: no split '{split}' (has {', '.join(dataset)}); set {where}")
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(source.hub_id, split=split, revision=revision)
    except DataError:
        raise
    except Exception as exc:  # the hub raises many types; the user needs one line either way
        raise DataError(f"{source}: could not load split '{split}': {str(exc).splitlines()[0]} "
                        "(offline? point data.train at a local file)") from None
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [dict(row) for row in dataset]
