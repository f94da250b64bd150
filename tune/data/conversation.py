"""Chat messages -> token ids and labels, for every format that renders through a chat template
(instruction rows become one user and one assistant turn; chat rows are whole conversations).

The conversation is rendered prefix by prefix: the text up to each assistant turn (with the
generation prompt) is masked, the assistant's reply through its end-of-turn token is trained. Each
segment is tokenized on its own, so the boundary between masked and trained tokens is exact."""

from __future__ import annotations

from dataclasses import dataclass, field

from tune.errors import DataError, TuneError

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
        messages = within_reach(messages, max_length)

    def render(upto: int, gen: bool) -> str:
        return render_messages(messages[:upto], tokenizer, template, gen, where)
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


def render_messages(messages: list[dict], tokenizer, template: str, generation_prompt: bool, where: str) -> str:
    """The messages as the chat template renders them; a template that refuses them is one line naming the row."""
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # noqa: BLE001  (jinja raises its own types; a template's raise_exception too)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{where}: the chat template refused this conversation ({first[:200]}); fix the row's "
                        "turns, or set data.template: chatml") from None


def within_reach(messages: list[dict], max_length: int) -> list[dict]:
    """Each message's text cut where no tokenizer could fit more of it in max_length tokens: what is cut could
    never be trained on, and a 50 MB line would otherwise take gigabytes to tokenize."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    return [m | {"content": m["content"][:limit]} if len(m["content"]) > limit else m for m in messages]


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


def fit(prompt: int, length: int, max_length: int, policy: str, where: str, report: LengthReport) -> int | None:
    """data.overlength for one example of `length` tokens whose first `prompt` are its prompt, for every format:
    how many tokens it keeps (all when it fits, max_length when truncated), or None when it is dropped.
    Truncation never cuts a prompt: an example whose prompt alone reaches max_length is dropped under
    `truncate` too, as nothing would be left to learn from (a GRPO prompt is all prompt)."""
    report.longest = max(report.longest, length)
    if length <= max_length:
        report.kept += 1
        return length
    report.rows_over.append(where)
    if policy == "error":
        raise DataError(f"{where}: {length} tokens, over data.max_length={max_length} "
                        "(raise max_length, or set data.overlength: truncate or drop)")
    if policy == "drop" or prompt >= max_length:
        report.dropped += 1
        return None
    report.truncated += 1
    report.kept += 1
    return max_length


def fit_length(example: Tokenized, max_length: int, policy: str, where: str, report: LengthReport) -> Tokenized | None:
    """Apply data.overlength to a tokenized conversation; None means the example is dropped."""
    kept = fit(example.prompt_tokens, len(example.input_ids), max_length, policy, where, report)
    if kept is None:
        return None
    return Tokenized(example.input_ids[:kept], example.labels[:kept], example.prompt_tokens)


def length_notes(report: LengthReport, max_length: int, noun: str) -> list[str]:
    """What data.overlength did, as the run prints it; every example over max_length is a wrong max_length,
    not data to cut or drop."""
    total = report.kept + report.dropped
    if total and len(report.rows_over) == total:
        raise TuneError(f"data.max_length: all {total} {noun} are longer than {max_length} tokens "
                        f"(longest {report.longest}); raise data.max_length")
    if not (report.truncated or report.dropped):
        return []
    return [(f"{report.truncated} {noun} truncated and {report.dropped} dropped "
             f"(over data.max_length={max_length}; longest {report.longest} tokens)")]
