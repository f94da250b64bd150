"""The `instruction` format: alpaca-style rows {instruction, input?, output} or {prompt, completion},
turned into one user and one assistant message (tokenized by tune/data/conversation.py)."""

from __future__ import annotations

from tune.errors import DataError


def row_to_messages(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> list[dict]:
    """`where` is "FILE:ROW" for error lines. Raises DataError naming the missing or bad column."""

    def get(name: str) -> str | None:
        column = columns.get(name, name)
        value = row.get(column)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise DataError(f"{where}: column '{column}' must be text, got {type(value).__name__}")
        return value

    instruction, output = get("instruction"), get("output")
    if instruction is not None or output is not None:
        if instruction is None or output is None:
            missing = "instruction" if instruction is None else "output"
            raise DataError(f"{where}: missing or empty column '{columns.get(missing, missing)}' "
                            f"(map yours with data.columns.{missing})")
        extra = get("input")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        response = output
    else:
        user, response = get("prompt"), get("completion")
        if user is None or response is None:
            names = [columns.get(n, n) for n in ("instruction", "output", "prompt", "completion")]
            raise DataError(f"{where}: needs columns {names[0]}+{names[1]} or {names[2]}+{names[3]}; "
                            f"row has {sorted(row)} (map yours with data.columns)")
    system = get("system") or system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
