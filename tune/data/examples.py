"""Rows to the examples a trainer takes, once for every format tune tokenizes itself (SFT's conversations and
text, preference pairs, unpaired rows, GRPO prompts): the rows read and split (tune/data/rows.py), each split
turned into examples by its format, which applies data.overlength through the one length policy
(tune/data/conversation.py `fit`), the policy's counts as the run's notes, and the fingerprint of exactly
what is trained on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tune.data.conversation import LengthReport, length_notes
from tune.data.rows import Prepared, sha256, train_eval_rows
from tune.recipe import DataSection


def prepare_examples(data: DataSection, template: str, recipe_dir: Path | None, seed: int,
                     examples: Callable[[list, LengthReport], list[dict]], noun: str,
                     digest: Callable[[dict], object], key: str = "tokens_sha256") -> Prepared:
    """`examples(rows, report)`: a split's (where, row) pairs as the format's examples, the length policy applied;
    `noun` names them in the notes ("pairs"); `digest(example)` is what the fingerprint's `key` hashes of each."""
    report = LengthReport()
    fingerprint = {"sources": [], "template_sha256": sha256(template.encode())}
    train_rows, eval_rows = train_eval_rows(data, recipe_dir, seed, fingerprint)
    train = examples(train_rows, report)
    evaluation = examples(eval_rows, report) if eval_rows else []
    notes = length_notes(report, data.max_length, noun)
    fingerprint |= {"train_examples": len(train), "eval_examples": len(evaluation),
                    key: sha256(repr([digest(example) for example in train + evaluation]).encode())}
    return Prepared(train, evaluation, fingerprint, report, notes, train_rows)
