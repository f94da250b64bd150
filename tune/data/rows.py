"""Rows as a trainer reads them, whatever their format: every source of a `data.train`/`data.eval` value
read (tune/data/sources.py), each row numbered for error lines, a seeded eval split, source weights
applied to what is trained on, and the fingerprint of what was read (data_fingerprint.json)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from tune.data.conversation import LengthReport
from tune.data.overlap import refuse_trained_eval
from tune.data.sources import Source, read_rows, resolve_sources
from tune.errors import DataError
from tune.recipe import DataSection


@dataclass
class Prepared:
    train: list[dict]
    eval: list[dict]
    fingerprint: dict
    report: LengthReport
    notes: list[str] = field(default_factory=list)
    train_rows: list[tuple[str, dict]] = field(default_factory=list)  # (where, row) before tokenizing


def load_rows(data: DataSection, spec, key: str, recipe_dir: Path | None, seed: int,
              fingerprint: dict | None = None) -> list[tuple[str, dict]]:
    """(where, row) for every row of every source, with source weights applied (seeded)."""
    return [item for source, rows in _read_sources(data, spec, key, recipe_dir, fingerprint)
            for item in _weighted(rows, source.weight, seed)]


def train_eval_rows(data: DataSection, recipe_dir: Path | None, seed: int,
                    fingerprint: dict | None = None) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(train, eval) as (where, row): data.eval's rows, or a seeded data.eval_fraction of data.train's rows
    held out before the source weights repeat the rest, so no held-out row is also trained on. Every format
    splits here, on rows, before tokenizing. Weights apply to training sources only."""
    sources = _read_sources(data, data.train, "data.train", recipe_dir, fingerprint)
    if data.eval is not None:
        evaluation = [item for _, rows in _read_sources(data, data.eval, "data.eval", recipe_dir, fingerprint)
                      for item in rows]
    else:
        pooled = [(number, item) for number, (_, rows) in enumerate(sources) for item in rows]
        kept, held = split_off(pooled, data.eval_fraction, seed)
        evaluation = [item for _, item in held]
        if held and not kept:
            raise DataError(f"data.eval_fraction: holding out {data.eval_fraction:g} of {len(held)} row leaves none to "
                            "train on; give data.eval (a file of its own) or more rows")
        sources = [(source, [item for n, item in kept if n == number]) for number, (source, _) in enumerate(sources)]
    train = [item for source, rows in sources for item in _weighted(rows, source.weight, seed)]
    if data.eval is not None:
        refuse_trained_eval(data, train, evaluation)
    return train, evaluation


def _read_sources(data: DataSection, spec, key: str, recipe_dir: Path | None,
                  fingerprint: dict | None) -> list[tuple[Source, list[tuple[str, dict]]]]:
    read = []
    for source in resolve_sources(spec, recipe_dir, key):
        found = read_rows(source, data.split, revision=data.revision)
        if fingerprint is not None:
            fingerprint["sources"].append(describe_source(source, len(found)))
        read.append((source, [(f"{source}:row {n}", row) for n, row in enumerate(found, start=1)]))
    return read


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
