"""Rows as a trainer reads them, whatever their format: every source of a `data.train`/`data.eval` value
read (tune/data/sources.py), each row numbered for error lines, source weights applied, a seeded eval
split, and the fingerprint of what was read (data_fingerprint.json)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from tune.data.conversation import LengthReport
from tune.data.sources import Source, read_rows, resolve_sources
from tune.recipe import DataSection


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
            fingerprint["sources"].append(describe_source(source, len(found)))
        numbered = [(f"{source}:row {n}", row) for n, row in enumerate(found, start=1)]
        rows += _weighted(numbered, source.weight, seed)
    return rows


def _weighted(rows: list, weight: float, seed: int) -> list:
    whole, part = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(rows, round(len(rows) * part)) if part else []
    return rows * whole + extra


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded share of the items, the rest in their original order."""
    if fraction <= 0:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(items) * fraction))
    return [items[i] for i in sorted(order[cut:])], [items[i] for i in order[:cut]]


def describe_source(source: Source, rows: int) -> dict:
    described = {"spec": source.spec, "rows": rows, "weight": source.weight}
    if source.hub_id:
        return described | {"hub_id": source.hub_id}
    path = source.path or source.saved
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return described | {"path": str(path), "bytes": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
