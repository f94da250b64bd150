"""The data formats, as one table: for each `data.format`, how a row is checked and, for the formats
whose rows are conversations, how a row becomes chat messages (the prompt/reply split every chat
format shares, tune/data/conversation.py). Which method takes which format is the recipe's rule
(tune/recipe/rules.py); the fields each format reads are the schema's (FORMAT_FIELDS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tune.data import chat, classification, completion, instruction, preference


@dataclass(frozen=True)
class Format:
    check: Callable  # (row, data section, where) -> None; raises DataError naming the row
    messages: Callable | None  # (row, columns, system prompt, where) -> chat messages; None: not a conversation


def _as_messages(to_messages):
    return lambda row, data, where: to_messages(row, data.columns, data.system_prompt, where)


def _preference_check(row, data, where):
    try:  # with data.drop_bad_pairs the run drops useless pairs, so only a malformed row is a problem
        preference.row_to_pair(row, data.columns, data.system_prompt, where)
    except preference.BadPair:
        if not data.drop_bad_pairs:
            raise


FORMATS = {
    "instruction": Format(_as_messages(instruction.row_to_messages), instruction.row_to_messages),
    "chat": Format(_as_messages(chat.row_to_messages), chat.row_to_messages),
    # prompt + chosen as one conversation: what `tune data preview` and `tune data check` show
    "preference": Format(_preference_check, preference.row_to_messages),
    "completion": Format(lambda row, data, where: completion.row_text(row, data.columns, where), None),
    "classification": Format(lambda row, data, where: classification.check_row(row, data.columns, data.labels, where),
                             None),
}
