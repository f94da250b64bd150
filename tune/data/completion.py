"""The `completion` format: raw domain text for continued pre-training. Each document is tokenized,
ended with EOS, concatenated with the others and cut into blocks of `max_length` tokens; every token
carries loss."""

from __future__ import annotations

from tune.errors import DataError

MIN_BLOCK = 16  # a shorter remainder teaches little and wastes a batch slot
PIECE_CHARS = 1 << 20  # a long document is tokenized in pieces: a 50 MB line whole took gigabytes


def row_text(row: dict, columns: dict[str, str], where: str) -> str:
    column = columns.get("text", "text")
    value = row.get(column)
    if not isinstance(value, str):
        got = "missing" if value is None else type(value).__name__
        raise DataError(f"{where}: column '{column}' must be text, got {got} (map yours with data.columns.text)")
    return value


def chunk(texts: list[str], tokenizer, max_length: int) -> list[dict]:
    stream: list[int] = []
    for text in texts:
        if text.strip():
            stream += token_ids(text, tokenizer) + [tokenizer.eos_token_id]
    blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    blocks = [block for block in blocks if len(block) >= MIN_BLOCK]
    return [{"input_ids": block, "labels": list(block)} for block in blocks]


def token_ids(text: str, tokenizer) -> list[int]:
    """The text's ids, tokenized in pieces of about PIECE_CHARS cut at a space (the space starts the next
    piece, as BPE tokenizers attach it to the following word), so memory stays flat for any length."""
    ids, start = [], 0
    while start < len(text):
        end = min(len(text), start + PIECE_CHARS)
        if end < len(text):
            space = text.rfind(" ", start + PIECE_CHARS // 2, end)
            end = space if space > start else end
        ids += tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        start = end
    return ids
