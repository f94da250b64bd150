"""The `preference` format: {prompt, chosen, rejected, system?} per row, each side plain text or chat
messages, rendered with the same chat template as SFT. A pair is tokenized as two conversations that
share the prompt (tune/data/conversation.py), so the prompt/reply boundary is exactly the one SFT
trains on. Pairs that teach nothing (chosen == rejected, or an empty side) are `BadPair`s: they stop the
run, or are dropped and counted when `data.drop_bad_pairs` is set."""

from __future__ import annotations

from pathlib import Path

from tune.data.chat import ROLE_NAMES
from tune.data.conversation import LengthReport, fit, tokenize
from tune.data.examples import prepare_examples
from tune.data.rows import Prepared
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
    """data.overlength for a pair: the longer side decides; truncation cuts both replies to the room the
    prompt leaves."""
    prompt = len(pair["prompt_ids"])
    kept = fit(prompt, prompt + max(len(pair["chosen_ids"]), len(pair["rejected_ids"])), max_length, policy, where,
               report)
    if kept is None:
        return None
    room = kept - prompt
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


def prepare_pairs(data: DataSection, tokenizer, template: str, recipe_dir: Path | None, seed: int) -> Prepared:
    """The pairs DPO, ORPO and reward models train on: the same sources, weights, split, length policy and
    fingerprint as tune.data.prepare.prepare, and the same tokens as SFT."""
    dropped: list[str] = []
    prepared = prepare_examples(data, template, recipe_dir, seed,
                                lambda rows, report: tokenize_pairs(data, rows, tokenizer, template, report, dropped),
                                "pairs", lambda pair: [pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]])
    if not prepared.train:
        raise TuneError("data.train: no usable preference pairs"
                        + (f" ({len(dropped)} bad pairs dropped)" if dropped else ""))
    prepared.fingerprint["bad_pairs_dropped"] = len(dropped)
    if dropped:
        prepared.notes.insert(0, f"dropped {len(dropped)} bad pairs (data.drop_bad_pairs), first: {dropped[0]}")
    return prepared


def sequence_tokens(pairs: list[dict]) -> int:
    """Tokens in both whole sequences of every pair (prompt + chosen, prompt + rejected): what ORPO and reward
    models run through the model."""
    return sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
