"""The `chat` format: a conversation per row, OpenAI-style `messages` [{role, content}] or ShareGPT
`conversations` [{from, value}] (human/gpt/system), multi-turn. `data.columns` can rename the list
column (`messages`), and the keys inside each message (`role`, `content`)."""

from __future__ import annotations

from tune.errors import DataError

ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
              "bot": "assistant", "model": "assistant"}


def row_to_messages(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> list[dict]:
    column = columns.get("messages")
    if column is None:
        column = "messages" if "messages" in row or "conversations" not in row else "conversations"
    sharegpt = column == "conversations" and "messages" not in columns
    role_key = columns.get("role", "from" if sharegpt else "role")
    content_key = columns.get("content", "value" if sharegpt else "content")
    turns = row.get(column)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: column '{column}' must be a non-empty list of messages; row has {sorted(row)} "
                        "(map yours with data.columns.messages)")
    messages = []
    for index, turn in enumerate(turns):
        at = f"{where}: {column}[{index}]"
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DataError(f"{at}: each message needs '{role_key}' and '{content_key}' keys "
                            "(map yours with data.columns.role / data.columns.content)")
        role = ROLE_NAMES.get(str(turn[role_key]).lower())
        if role is None:
            raise DataError(f"{at}: unknown role '{turn[role_key]}'; use system, user or assistant "
                            "(ShareGPT human/gpt also work)")
        if not isinstance(turn[content_key], str):
            raise DataError(f"{at}: '{content_key}' must be text, got {type(turn[content_key]).__name__}")
        if role == "system" and index != 0:
            raise DataError(f"{at}: a system message may only come first")
        messages.append({"role": role, "content": turn[content_key]})
    turns_only = [(i, m["role"]) for i, m in enumerate(messages) if m["role"] != "system"]
    if turns_only and turns_only[0][1] != "user":
        raise DataError(f"{where}: {column}[{turns_only[0][0]}]: the conversation starts with the assistant; it must "
                        "start with a user turn (after an optional system message)")
    for (_, before), (index, role) in zip(turns_only, turns_only[1:]):
        if role == before:
            raise DataError(f"{where}: {column}[{index}]: two {role} turns in a row; user and assistant turns "
                            "must alternate (merge the two messages into one)")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing to learn")
    return messages
