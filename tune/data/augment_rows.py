"""data.augment.rows: the rows `tune data augment` wrote, trained as a person left them after review.

A small generator writes no usable rewording for some rows and odd ones for others (SmolLM2-135M: about a
third of an FAQ's rows get none), and people ask with words no generator guessed. The file it wrote is the
place to fix that: cut a bad row, correct one, add the wordings your users actually type (copy a line,
change the question), mark some rewordings `"heldout": true` to be the run's unseen-wording check. With
`data.augment.rows` set the run trains that file as it stands and generates nothing."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from tune.data.augment import Augment, split_passages
from tune.data.facts import Fact, facts_of, normal
from tune.data.formats import FORMATS
from tune.data.probes import ProbeSet
from tune.data.sources import numbered_json_lines
from tune.errors import DataError

KINDS = ("rewordings", "swaps", "frames", "subject", "statements", "passages", "reverse")
TEXTS = ("statements", "passages")  # kinds trained as plain text
SHAPE = "{kind, messages: [user question, assistant answer], heldout} or {kind: statements or passages, text}"


def read_rows(spec: str, recipe_dir: Path | None) -> tuple[Path, list[dict]]:
    """The rows of the file `spec` names, each checked; every problem is one line naming its row."""
    from tune.paths import find_file

    path = find_file(spec, recipe_dir)
    if path is None or not path.is_file():
        raise DataError(f"data.augment.rows: no such file: {spec}; write it with `tune data augment RECIPE --out {spec}`")
    rows, problems = [], []
    for number, row in numbered_json_lines(path):
        if isinstance(row, json.JSONDecodeError):
            problems.append(f"{path}:row {number}: not valid JSON ({row.msg}); rows are {SHAPE}")
            continue
        problem = _problem(row)
        if problem:
            problems.append(f"{path}:row {number}: {problem}")
        else:
            rows.append(row | {"heldout": row.get("heldout", False)})
    if problems:
        raise DataError(problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []))
    if not rows:
        raise DataError(f"{path}: no rows; rows are {SHAPE}")
    return path, rows


def _problem(row) -> str | None:
    if not isinstance(row, dict):
        return f"not an object; rows are {SHAPE}"
    kind = row.get("kind")
    if kind not in KINDS:
        return f"'kind' is {kind!r}; it must be one of {', '.join(KINDS)}"
    if not isinstance(row.get("heldout", False), bool):
        return "'heldout' must be true or false"
    if kind in TEXTS:
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            return f"a row of {kind} needs 'text': what to train on"
        return "only rewordings can be held out; set 'heldout': false" if row.get("heldout") else None
    messages = row.get("messages")
    turns = isinstance(messages, list) and len(messages) >= 2 and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        and m["content"].strip() for m in messages)
    if not turns or messages[-2]["role"] != "user" or messages[-1]["role"] != "assistant":
        return "needs 'messages': the question as a user turn, then the answer as the assistant turn"
    if row.get("heldout") and kind != "rewordings":
        return "only rewordings can be held out; set 'heldout': false"
    return None


def reviewed_augment(path: Path, rows: list[dict], tokenizer, template: str, data,
                     train_rows: list[tuple[str, dict]], report, keep_best: bool = False) -> Augment:
    """Augment from reviewed rows: the held-out rewordings become the unseen-wording check, each answered
    right when it names what its fact's answer adds to the fact's own question (the row's own question
    and answer when its answer is none of the training rows')."""
    facts = facts_of(train_rows, FORMATS[data.format].messages, data)
    by_answer = {normal(fact.answer): fact for fact in facts}
    common = facts[0].common if facts else None
    questions, expected, answers, problems = [], [], [], []
    for number, row in enumerate(rows, start=1):
        if not row["heldout"]:
            continue
        question, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        fact = by_answer.get(normal(answer)) or Fact(str(path), row["messages"], question, answer, common)
        if fact.expected is None:
            problems.append(f"{path}: held-out row {number}: its answer names nothing to check it by; set 'heldout': false")
        questions.append(question)
        expected.append([fact.expected])
        answers.append(answer)
    if keep_best and not questions and not data.probes:
        problems.append(f"train.keep: best: {path} marks no rewording \"heldout\": true and there are no data.probes "
                        "to compare evaluations by; mark some (about a quarter of each row's) or set train.keep: final")
    if problems:
        raise DataError(problems)
    examples, passages = split_passages([row for row in rows if not row["heldout"]], tokenizer, template, data, report)
    counts = Counter(row["kind"] for row in rows)
    unknown = sum(1 for row in rows if row["kind"] not in TEXTS and normal(row["messages"][-1]["content"]) not in by_answer)
    note = (f"augment: {len(rows)} reviewed rows from {path} -> {len(examples) + len(passages)} more training examples; "
            + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS if counts[kind])
            + (f"; {unknown} answer no training row's answer word for word" if unknown else "")
            + f"; {len(questions)} rewordings held out as the unseen-wording check")
    fingerprint = {"rows_file": str(path), "counts": dict(counts), "heldout": len(questions), "examples": len(examples) + len(passages),
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    heldout = ProbeSet("augment-heldout", None, questions, expected, answers) if questions else None
    return Augment(rows, examples, heldout, note, fingerprint, passages)
