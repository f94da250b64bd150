"""Chat messages -> token ids and labels, for every format that renders through a chat template
(instruction rows become one user and one assistant turn; chat rows are whole conversations).

The conversation is rendered prefix by prefix: the text up to each assistant turn (with the
generation prompt) is masked, the assistant's reply through its end-of-turn token is trained. Each
segment is tokenized on its own, so the boundary between masked and trained tokens is exact."""

from __future__ import annotations

from dataclasses import dataclass, field

from tune.errors import DataError

# No tokenizer's token is this long: text past max_length x this many characters can never be inside the
# first max_length tokens, so it is cut before tokenizing (a 50 MB line would otherwise take gigabytes).
MAX_CHARS_PER_TOKEN = 64


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int  # tokens before the first trained one


def tokenize(messages: list[dict], tokenizer, template: str, train_on: str = "assistant",
             max_length: int | None = None, where: str = "data") -> Tokenized:
    """train_on: assistant = every assistant turn; last_assistant = only the final one; all = every token.
    max_length: cut each message's text first where no tokenizer could fit more of it in that many tokens
    (the example is still over max_length, so data.overlength decides as before)."""
    if max_length is not None:
        limit = max_length * MAX_CHARS_PER_TOKEN
        messages = [m | {"content": m["content"][:limit]} if len(m["content"]) > limit else m for m in messages]

    def render(upto: int, gen: bool) -> str:
        try:
            return tokenizer.apply_chat_template(messages[:upto], chat_template=template, tokenize=False,
                                                 add_generation_prompt=gen)
        except Exception as exc:  # noqa: BLE001  (jinja raises its own types; a template's raise_exception too)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"{where}: the chat template refused this conversation ({first[:200]}); fix the row's "
                            "turns, or set data.template: chatml") from None
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    eos = tokenizer.eos_token
    segments: list[tuple[str, bool]] = []  # (text, trained?)
    done = ""
    for turn in turns:
        prompt, full = render(turn, True), render(turn + 1, False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError("data.template: the template renders earlier turns differently once a later turn "
                            "is added, so replies cannot be located; use data.template: chatml or alpaca")
        reply = full[len(prompt):]
        trailing = ""
        if eos and reply.rstrip().endswith(eos):
            # Text after EOS is never generated: it belongs to the next (masked) segment, or nowhere.
            trailing = reply[len(reply.rstrip()):]
            reply = reply.rstrip()
        trained = train_on == "all" or train_on == "assistant" or turn == turns[-1]
        segments += [(prompt[len(done):], train_on == "all"), (reply, trained)]
        done = full[: len(full) - len(trailing)]
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    if _adds_bos(tokenizer) and not render(len(messages), False).startswith(tokenizer.bos_token):
        ids, labels = [tokenizer.bos_token_id] + ids, [-100] + labels
    if eos and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]  # learn to stop
    first = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    return Tokenized(ids, labels, first)


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


def rendered_tokens(tokenizer, conversations: list[list[dict]]) -> int:
    """Tokens in the conversations as the tokenizer's chat template renders them: the per-epoch count of a
    trainer that tokenizes rows itself (KTO, ORPO), for the run's tokens/s."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
