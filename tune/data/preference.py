"""The `preference` format: {prompt, chosen, rejected, system?} per row, each side plain text or chat
messages, rendered with the same chat template as SFT. A pair is tokenized as two conversations that
share the prompt (tune/data/conversation.py), so the prompt/reply boundary is exactly the one SFT
trains on. Pairs that teach nothing (chosen == rejected, or an empty side) are `BadPair`s: they stop the
run, or are dropped and counted when `data.drop_bad_pairs` is set."""

from __future__ import annotations

from pathlib import Path

from tune.data.chat import ROLE_NAMES
from tune.data.conversation import LengthReport, tokenize
from tune.data.rows import Prepared, sha256, train_eval_rows
from tune.errors import DataError, TuneError
from tune.recipe import DataSection


class BadPair(DataError):
    """A well-formed row whose pair carries no preference signal."""


def row_to_pair(row: dict, columns: dict[str, str], system_prompt: str | None,
                where: str) -> tuple[list[dict], dict, dict]:
    """(prompt messages, chosen reply, rejected reply); raises DataError, or BadPair for a useless pair."""
    missing = [columns.get(name, name) for name in ("prompt", "chosen", "rejected") if columns.get(name, name) not in row]
    if missing:
        raise DataError(f"{where}: missing column{'s' * (len(missing) > 1)} {', '.join(missing)}; row has "
                        f"{sorted(row)} (map yours with data.columns.prompt / chosen / rejected)")
    prompt = as_messages(row[columns.get("prompt", "prompt")], "user", f"{where}: prompt")
    if not prompt:
        raise DataError(f"{where}: prompt is empty")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{where}: prompt must end with a user message")
    system = row.get(columns.get("system", "system")) or system_prompt
    if system and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": str(system)})
    sides = {}
    for side in ("chosen", "rejected"):
        replies = as_messages(row[columns.get(side, side)], "assistant", f"{where}: {side}")
        if len(replies) > 1 or (replies and replies[0]["role"] != "assistant"):
            raise DataError(f"{where}: {side} must be one assistant reply (text, or a list holding one assistant message)")
        if not replies or not replies[0]["content"].strip():
            raise BadPair(f"{where}: {side} is empty, so the pair teaches nothing "
                          "(fix the row, or set data.drop_bad_pairs: true to skip such rows)")
        sides[side] = replies[0]
    if sides["chosen"]["content"].strip() == sides["rejected"]["content"].strip():
        raise BadPair(f"{where}: chosen and rejected are the same text, so the pair teaches nothing "
                      "(fix the row, or set data.drop_bad_pairs: true to skip such rows)")
    return prompt, sides["chosen"], sides["rejected"]


def row_to_messages(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> list[dict]:
    """Prompt + chosen as one conversation: what `tune data preview` and `tune data check` look at."""
    prompt, chosen, _ = row_to_pair(row, columns, system_prompt, where)
    return prompt + [chosen]


def as_messages(value, default_role: str, where: str) -> list[dict]:
    """Text becomes one message of `default_role`; a list must hold {role, content} messages."""
    if value is None or isinstance(value, str):
        return [{"role": default_role, "content": value or ""}] if (value or "").strip() else []
    if not isinstance(value, list):
        raise DataError(f"{where}: must be text or a list of {{role, content}} messages, got {type(value).__name__}")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise DataError(f"{where}[{index}]: each message needs 'role' and text 'content'")
        role = ROLE_NAMES.get(str(message["role"]).lower())
        if role is None:
            raise DataError(f"{where}[{index}]: unknown role '{message['role']}'; use system, user or assistant")
        messages.append({"role": role, "content": message["content"]})
    return messages


def tokenize_pair(prompt: list[dict], chosen: dict, rejected: dict, tokenizer, template: str,
                  max_length: int | None = None, where: str = "data") -> dict:
    """{prompt_ids, chosen_ids, rejected_ids}: the columns TRL's preference collator reads."""
    # last_assistant: only the final reply carries loss, so `prompt_tokens` is where the reply starts even
    # when the prompt itself holds earlier assistant turns.
    good = tokenize(prompt + [chosen], tokenizer, template, "last_assistant", max_length, where)
    bad = tokenize(prompt + [rejected], tokenizer, template, "last_assistant", max_length, where)
    cut = good.prompt_tokens
    if bad.input_ids[: bad.prompt_tokens] != good.input_ids[:cut]:
        raise DataError("data.template: the prompt renders differently before chosen and rejected replies; "
                        "use data.template: chatml")
    return {"prompt_ids": good.input_ids[:cut], "chosen_ids": good.input_ids[cut:],
            "rejected_ids": bad.input_ids[bad.prompt_tokens:]}


def fit_pair(pair: dict, max_length: int, policy: str, where: str, report: LengthReport) -> dict | None:
    """data.overlength for a pair: the longer side decides; truncation cuts the replies, never the prompt."""
    prompt = len(pair["prompt_ids"])
    length = prompt + max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
    report.longest = max(report.longest, length)
    if length <= max_length:
        report.kept += 1
        return pair
    report.rows_over.append(where)
    if policy == "error":
        raise DataError(f"{where}: {length} tokens, over data.max_length={max_length} "
                        "(raise max_length, or set data.overlength: truncate or drop)")
    if policy == "drop" or prompt >= max_length:
        report.dropped += 1  # a prompt that fills max_length leaves no reply to compare
        return None
    report.truncated += 1
    report.kept += 1
    room = max_length - prompt
    return pair | {"chosen_ids": pair["chosen_ids"][:room], "rejected_ids": pair["rejected_ids"][:room]}


def tokenize_pairs(data: DataSection, rows, tokenizer, template: str, report: LengthReport,
                   dropped: list[str]) -> list[dict]:
    """Every row as a tokenized pair; bad pairs are collected (and raised together unless dropped)."""
    pairs, bad = [], []
    for where, row in rows:
        try:
            prompt, chosen, rejected = row_to_pair(row, data.columns, data.system_prompt, where)
        except BadPair as exc:
            bad += exc.problems
            continue
        pair = fit_pair(tokenize_pair(prompt, chosen, rejected, tokenizer, template, data.max_length, where),
                        data.max_length, data.overlength, where, report)
        if pair is not None:
            pairs.append(pair)
    if bad and not data.drop_bad_pairs:
        raise DataError(bad)
    dropped += bad
    return pairs


def prepare_pairs(data: DataSection, tokenizer, template: str, recipe_dir: Path | None, seed: int):
    """The preference twin of tune.data.prepare.prepare: same sources, weights, split and fingerprint."""
    report, dropped = LengthReport(), []
    fingerprint = {"sources": [], "template_sha256": sha256(template.encode())}
    train_rows, eval_rows = train_eval_rows(data, recipe_dir, seed, fingerprint)
    train = tokenize_pairs(data, train_rows, tokenizer, template, report, dropped)
    evaluation = tokenize_pairs(data, eval_rows, tokenizer, template, report, dropped)
    if not train:
        raise TuneError("data.train: no usable preference pairs" + (f" ({len(dropped)} bad pairs dropped)" if dropped else ""))
    fingerprint |= {"train_examples": len(train), "eval_examples": len(evaluation), "bad_pairs_dropped": len(dropped),
                    "tokens_sha256": sha256(repr([[p["prompt_ids"], p["chosen_ids"], p["rejected_ids"]]
                                                for p in train + evaluation]).encode())}
    notes = [f"dropped {len(dropped)} bad pairs (data.drop_bad_pairs), first: {dropped[0]}"] if dropped else []
    if report.truncated or report.dropped:
        notes.append(f"{report.truncated} pairs truncated and {report.dropped} dropped "
                     f"(over data.max_length={data.max_length}; longest {report.longest} tokens)")
    return Prepared(train, evaluation, fingerprint, report, notes)


def prepare_conversations(data: DataSection, recipe_dir: Path | None, seed: int) -> tuple[list[dict], list[dict], dict]:
    """Pairs as chat messages, {"prompt", "chosen", "rejected"}, for trainers that render and tokenize
    themselves (ORPO); the same rows, checks and data.drop_bad_pairs as prepare_pairs."""
    fingerprint: dict = {"sources": []}
    bad: list[str] = []

    def convert(rows):
        pairs = []
        for where, row in rows:
            try:
                prompt, chosen, rejected = row_to_pair(row, data.columns, data.system_prompt, where)
            except BadPair as exc:
                bad.extend(exc.problems)
                continue
            pairs.append({"prompt": prompt, "chosen": [chosen], "rejected": [rejected]})
        return pairs

    train_rows, eval_rows = train_eval_rows(data, recipe_dir, seed, fingerprint)
    train, evaluation = convert(train_rows), convert(eval_rows)
    if bad and not data.drop_bad_pairs:
        raise DataError(bad)
    if not train:
        raise TuneError("data.train: no usable pairs")
    fingerprint.update(train_examples=len(train), eval_examples=len(evaluation), dropped_pairs=len(bad),
                       rows_sha256=sha256(repr(train + evaluation).encode()))
    return train, evaluation, fingerprint
