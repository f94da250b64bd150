"""The `classification` format: each row is a text (or a text pair) and a label. Labels may be strings
or integers; either way a label is known by its string form ("positive", "3"), which is what
`data.labels` lists and what id2label/labels.json hold. The label set is `data.labels` in the given
order, else every label of the train split sorted (numbers numerically), so ids never depend on the
order of the rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tune.data.conversation import MAX_CHARS_PER_TOKEN
from tune.data.rows import load_rows, sha256, train_eval_rows
from tune.errors import DataError
from tune.output import listed


def row_fields(row: dict, columns: dict[str, str], where: str, need_label: bool = True) -> tuple[str, str | None, str | None]:
    """(text, text_pair or None, label name) of one row; without need_label a missing label is None."""
    text_key, pair_key, label_key = (columns.get(name, name) for name in ("text", "text_pair", "label"))
    text, pair, label = row.get(text_key), row.get(pair_key), row.get(label_key)
    if not isinstance(text, str) or not text.strip():
        got = "missing" if text is None else ("empty" if isinstance(text, str) else type(text).__name__)
        raise DataError(f"{where}: column '{text_key}' must be non-empty text, got {got} (map yours with data.columns.text)")
    if pair is not None and not isinstance(pair, str):
        raise DataError(f"{where}: column '{pair_key}' must be text when present, got {type(pair).__name__}")
    if label is None and not need_label:
        return text, pair or None, None
    # bool is an int subclass, and True/False labels are almost always a mistaken column
    if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label.strip()):
        got = "missing" if label is None else repr(label)
        raise DataError(f"{where}: column '{label_key}' must be a label name or integer, got {got} "
                        "(map yours with data.columns.label)")
    return text, pair or None, str(label).strip()


def check_row(row: dict, columns: dict[str, str], labels: list | None, where: str) -> None:
    """For `tune validate`: the row is usable and, when the label set is declared, its label is in it."""
    _, _, label = row_fields(row, columns, where)
    if labels is not None:
        names = declared_names(labels)
        if label not in names:
            raise DataError(f"{where}: label '{label}' is not in data.labels ({listed(names)})")


def declared_names(labels: list) -> list[str]:
    names = [str(label).strip() for label in labels]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"data.labels: '{repeated[0]}' is listed more than once")
    return names


def label_names(declared: list | None, seen: list[str]) -> list[str]:
    """The label set in id order: declared, else the train split's labels sorted."""
    if declared is not None:
        return declared_names(declared)
    unique = set(seen)
    if all(_is_int(name) for name in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def read_labelled(data, spec, key: str, recipe_dir: Path | None, seed: int, fingerprint: dict | None = None,
                  need_label: bool = True) -> list[tuple[str, str, str | None, str | None]]:
    """(where, text, text_pair, label name) for every row of `spec` (a data.train/data.eval value)."""
    rows = load_rows(data, spec, key, recipe_dir, seed, fingerprint)
    return [(where, *row_fields(row, data.columns, where, need_label)) for where, row in rows]


def label_ids(rows: list[tuple], label2id: dict[str, int]) -> list[int]:
    """Ids of the rows' labels; a label outside the set is one line naming the first such row."""
    unknown = [(where, label) for where, _, _, label in rows if label not in label2id]
    if unknown:
        where, label = unknown[0]
        more = f" ({len(unknown) - 1} more rows like it)" if len(unknown) > 1 else ""
        raise DataError(f"{where}: label '{label}' is not in the label set ({listed(label2id)}){more}")
    return [label2id[label] for _, _, _, label in rows]


def encode(rows: list[tuple], tokenizer, max_length: int, label2id: dict[str, int] | None) -> list[dict]:
    """Token rows for the model: input ids, attention mask (token type ids for BERT pairs) and the label
    id. Texts longer than max_length are truncated (the pair's longer side first)."""
    ids = label_ids(rows, label2id) if label2id is not None else [None] * len(rows)
    encoded = []
    for (where, text, pair, _), label in zip(rows, ids):
        features = dict(tokenizer(*cut_texts(text, pair, max_length), truncation=True, max_length=max_length))
        if label is not None:
            features["labels"] = label
        encoded.append(features)
    return encoded


def cut_texts(text: str, pair: str | None, max_length: int) -> tuple[str, str | None]:
    """The text (pair) cut where no tokenizer could fit more of it in max_length tokens, before tokenizing."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    return text[:limit], pair[:limit] if pair else pair


def class_weights(setting, names: list[str], train_ids: list[int]) -> list[float] | None:
    """Loss weight per label id from train.class_weights; None means plain cross-entropy."""
    if setting == "none":
        return None
    if setting == "balanced":
        counts = Counter(train_ids)
        missing = [names[i] for i in range(len(names)) if not counts[i]]
        if missing:
            raise DataError(f"train.class_weights: balanced needs every label in the train split; "
                            f"'{missing[0]}' has no rows")
        return [len(train_ids) / (len(names) * counts[i]) for i in range(len(names))]
    unknown = [name for name in setting if name not in names]
    if unknown:
        raise DataError(f"train.class_weights: '{unknown[0]}' is not a label ({listed(names)})")
    if any(weight <= 0 for weight in setting.values()):
        raise DataError("train.class_weights: every weight must be > 0")
    return [float(setting.get(name, 1.0)) for name in names]


@dataclass
class Labelled:
    train: list[dict]  # token rows with their label id
    eval: list[dict]
    names: list[str]  # the label set in id order
    fingerprint: dict
    input_tokens: int  # train tokens per epoch


def prepare_labelled(data, tokenizer, recipe_dir: Path | None, seed: int) -> Labelled:
    """The classify twin of tune.data.prepare.prepare: the same sources, weights, split and fingerprint,
    plus the label set (declared, or every train label) that fixes the head's ids."""
    fingerprint = {"sources": []}
    train_rows, eval_rows = [[(where, *row_fields(row, data.columns, where, True)) for where, row in rows]
                             for rows in train_eval_rows(data, recipe_dir, seed, fingerprint)]
    names = label_names(data.labels, [label for *_, label in train_rows])
    if len(names) < 2:
        raise DataError(f"data.train: every row has the label '{names[0]}'; a classifier needs at least two labels")
    label2id = {name: i for i, name in enumerate(names)}
    train_set = encode(train_rows, tokenizer, data.max_length, label2id)
    eval_set = encode(eval_rows, tokenizer, data.max_length, label2id)
    fingerprint |= {"labels": names, "train_examples": len(train_set), "eval_examples": len(eval_set),
                    "tokens_sha256": sha256(repr([(r["input_ids"], r["labels"]) for r in train_set + eval_set]).encode())}
    return Labelled(train_set, eval_set, names, fingerprint, sum(len(row["input_ids"]) for row in train_set))


def label_warnings(data, recipe_dir: Path | None) -> list[str]:
    """For `tune validate`: label_warning on the train rows of local files (validate does not download)."""
    from tune.data.sources import resolve_sources
    from tune.errors import TuneError

    try:
        if any(source.hub_id for source in resolve_sources(data.train, recipe_dir, "data.train")):
            return []
        rows = read_labelled(data, data.train, "data.train", recipe_dir, seed=0)
    except TuneError:
        return []  # the row checks report it
    warning = label_warning([label for *_, label in rows])
    return [warning] if warning else []


def label_warning(labels: list[str]) -> str | None:
    """A label column that gives nearly every row its own label is almost always the wrong column (an id or
    the text), and a classifier cannot learn a label from one example. `labels`: one per train row."""
    counts = Counter(labels)
    singles = sum(1 for count in counts.values() if count == 1)
    if len(counts) < 20 or singles <= len(counts) / 2:
        return None
    return (f"data.train: {len(counts)} labels over {len(labels)} rows, {singles} of them on a single row; a "
            "classifier cannot learn a label from one example (is data.columns.label the label column?)")
