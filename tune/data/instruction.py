"""The `instruction` format: alpaca-style rows {instruction, input?, output} or {prompt, completion},
turned into chat messages, rendered with the chat template, and tokenized with loss on the response.

Prompt and response are tokenized separately and concatenated, so the boundary between masked and
trained tokens is exact (joint tokenization can merge a token across it)."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int


def tokenize(messages: list[dict], tokenizer, template: str, train_on: str = "completion") -> Tokenized:
    """Render prompt and full conversation; labels are -100 on the prompt and equal the ids on the
    response plus EOS (EOS is appended when the template does not already end the turn with it)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], chat_template=template, tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    if not full.startswith(prompt):
        raise DataError("data.template: the template renders the prompt differently inside the full "
                        "conversation, so the response cannot be located; use data.template: chatml or alpaca")
    completion = full[len(prompt):]
    eos = tokenizer.eos_token
    stripped = completion.rstrip()
    ends_with_eos = bool(eos) and stripped.endswith(eos)
    if ends_with_eos:
        completion = stripped  # text after EOS is never generated, so it must not be trained on
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if _adds_bos(tokenizer) and not prompt.startswith(tokenizer.bos_token):
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if eos and not ends_with_eos:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + completion_ids
    if train_on == "all":
        labels = list(input_ids)
    else:
        labels = [-100] * len(prompt_ids) + list(completion_ids)
    return Tokenized(input_ids, labels, len(prompt_ids))


def _adds_bos(tokenizer) -> bool:
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


@dataclass
class LengthReport:
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    longest: int = 0
    rows_over: list[str] = field(default_factory=list)


def fit_length(example: Tokenized, max_length: int, policy: str, where: str, report: LengthReport) -> Tokenized | None:
    """Apply data.overlength; None means the example is dropped."""
    length = len(example.input_ids)
    report.longest = max(report.longest, length)
    if length <= max_length:
        report.kept += 1
        return example
    report.rows_over.append(where)
    if policy == "error":
        raise DataError(f"{where}: {length} tokens, over data.max_length={max_length} "
                        "(raise max_length, or set data.overlength: truncate or drop)")
    if policy == "drop" or example.prompt_tokens >= max_length:
        report.dropped += 1  # a prompt that fills max_length leaves no response to learn from
        return None
    report.truncated += 1
    report.kept += 1
    return Tokenized(example.input_ids[:max_length], example.labels[:max_length], example.prompt_tokens)
