"""The data formats, as one table: for each `data.format`, how a row is checked, how a conversation row
becomes chat messages (the prompt/reply split every chat format shares, tune/data/conversation.py), and
how `tune data preview` / `tune data check` see a row. Which method takes which format is the recipe's
rule (tune/recipe/rules.py); the fields each format reads are the schema's (FORMAT_FIELDS)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from tune.data import chat, classification, completion, instruction, preference, prompts, unpaired
from tune.data.conversation import tokenize
from tune.errors import DataError


@dataclass(frozen=True)
class Format:
    check: Callable  # (row, data section, where) -> None; raises DataError naming the row
    messages: Callable | None  # (row, columns, system prompt, where) -> chat messages; None: not a conversation
    view: Callable  # (row, data section, tokenizer, template, where) -> View


@dataclass
class View:
    """One row as the trainer sees it, for preview and data check."""

    spans: list[tuple[str, bool]]  # (text, carries loss?) in order
    tokens: int
    trained: int
    key: str  # identity for finding duplicates
    tally: list[str]  # what the summary counts: the roles of a conversation, or a row's label
    chunked: bool = False  # raw text is cut into blocks, so max_length never drops it


def _conversation_view(to_messages):
    def view(row, data, tokenizer, template, where) -> View:
        messages = to_messages(row, data.columns, data.system_prompt, where)
        example = tokenize(messages, tokenizer, template, data.train_on, data.max_length, where)
        spans, start, labels = [], 0, example.labels
        for i in range(1, len(labels) + 1):
            if i == len(labels) or (labels[i] != -100) != (labels[start] != -100):
                spans.append((tokenizer.decode(example.input_ids[start:i]), labels[start] != -100))
                start = i
        return View(spans, len(example.input_ids), sum(label != -100 for label in labels),
                    json.dumps(messages, sort_keys=True), [message["role"] for message in messages])
    return view


def _labelled_view(row, data, tokenizer, template, where) -> View:
    # the model sees the text (pair) as tokenized; the label is shown after it
    classification.check_row(row, data.columns, data.labels, where)
    text, pair, label = classification.row_fields(row, data.columns, where)
    ids = tokenizer(*classification.cut_texts(text, pair, data.max_length))["input_ids"]
    return View([(tokenizer.decode(ids), False), (f" -> {label}", True)], len(ids), 0,
                json.dumps([text, pair, label]), [label])


def _text_view(row, data, tokenizer, template, where) -> View:
    text = completion.row_text(row, data.columns, where)
    if not text.strip():
        raise DataError(f"{where}: empty text")
    ids = completion.token_ids(text, tokenizer) + [tokenizer.eos_token_id]  # as chunk() ends it
    return View([(tokenizer.decode(ids), True)], len(ids), len(ids), text, [], chunked=True)


def _prompt_view(row, data, tokenizer, template, where) -> View:
    # what the model is asked; the reply is sampled during training, and the other columns go to the rewards
    prompt, extra = prompts.row_to_prompt(row, data.columns, data.system_prompt, where)
    text = tokenizer.apply_chat_template(prompt, chat_template=template, tokenize=False, add_generation_prompt=True)
    columns = "".join(f"\n  {key}: {json.dumps(value, ensure_ascii=False)[:200]}" for key, value in extra.items())
    return View([(text, False), (columns, True)] if columns else [(text, False)],
                len(tokenizer(text, add_special_tokens=False)["input_ids"]), 0,
                json.dumps(prompt, sort_keys=True), [message["role"] for message in prompt])


def _as_messages(to_messages):
    return lambda row, data, where: to_messages(row, data.columns, data.system_prompt, where)


def _preference_check(row, data, where):
    try:  # with data.drop_bad_pairs the run drops useless pairs, so only a malformed row is a problem
        preference.row_to_pair(row, data.columns, data.system_prompt, where)
    except preference.BadPair:
        if not data.drop_bad_pairs:
            raise


FORMATS = {
    "instruction": Format(_as_messages(instruction.row_to_messages), instruction.row_to_messages,
                          _conversation_view(instruction.row_to_messages)),
    "chat": Format(_as_messages(chat.row_to_messages), chat.row_to_messages, _conversation_view(chat.row_to_messages)),
    # prompt + chosen as one conversation: what `tune data preview` and `tune data check` show
    "preference": Format(_preference_check, preference.row_to_messages, _conversation_view(preference.row_to_messages)),
    "unpaired": Format(_as_messages(unpaired.row_to_messages), unpaired.row_to_messages,
                       _conversation_view(unpaired.row_to_messages)),
    "prompt": Format(_as_messages(prompts.row_to_messages), prompts.row_to_messages, _prompt_view),
    "completion": Format(lambda row, data, where: completion.row_text(row, data.columns, where), None, _text_view),
    "classification": Format(lambda row, data, where: classification.check_row(row, data.columns, data.labels, where),
                             None, _labelled_view),
}
