import pytest

from tune.data.chat import row_to_messages
from tune.data.completion import chunk
from tune.data.conversation import tokenize
from tune.errors import DataError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of Peru?"},
    {"role": "assistant", "content": "Lima."},
    {"role": "user", "content": "And Chile?"},
    {"role": "assistant", "content": "Santiago."},
]


def pieces(tok, *texts):
    return [tok(text, add_special_tokens=False)["input_ids"] for text in texts]


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
def test_multi_turn_masks_are_exact(tiny_tokenizer, train_on):
    tok = tiny_tokenizer
    masked1, reply1, masked2, reply2 = pieces(
        tok,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of Peru?<|im_end|>\n<|im_start|>assistant\n",
        "Lima.<|im_end|>",
        "\n<|im_start|>user\nAnd Chile?<|im_end|>\n<|im_start|>assistant\n",
        "Santiago.<|im_end|>",
    )
    example = tokenize(CONVERSATION, tok, tok.chat_template, train_on)
    assert example.input_ids == masked1 + reply1 + masked2 + reply2
    hidden = lambda ids: [-100] * len(ids)  # noqa: E731
    expected = {
        "assistant": hidden(masked1) + reply1 + hidden(masked2) + reply2,
        "last_assistant": hidden(masked1) + hidden(reply1) + hidden(masked2) + reply2,
        "all": masked1 + reply1 + masked2 + reply2,
    }[train_on]
    assert example.labels == expected
    assert example.labels[-1] == tok.eos_token_id  # the turn-end token is learned, so the model stops


def test_sharegpt_rows_map_roles():
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert row_to_messages(row, {}, "Be kind.", "f:1") == [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]


def test_columns_rename_the_list_and_its_keys():
    row = {"dialog": [{"speaker": "user", "text": "hi"}, {"speaker": "assistant", "text": "yo"}]}
    messages = row_to_messages(row, {"messages": "dialog", "role": "speaker", "content": "text"}, None, "f:1")
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


@pytest.mark.parametrize("row, message", [
    ({"messages": []}, "f:3: column 'messages' must be a non-empty list of messages; row has ['messages'] "
                       "(map yours with data.columns.messages)"),
    ({"messages": [{"role": "user", "content": "hi"}]},
     "f:3: the conversation has no assistant turn, so there is nothing to learn"),
    ({"messages": [{"role": "robot", "content": "hi"}]},
     "f:3: messages[0]: unknown role 'robot'; use system, user or assistant (ShareGPT human/gpt also work)"),
    ({"messages": [{"role": "user", "text": "hi"}]},
     "f:3: messages[0]: each message needs 'role' and 'content' keys (map yours with data.columns.role / "
     "data.columns.content)"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     "f:3: messages[1]: a system message may only come first"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "b"}]},
     "f:3: messages[1]: the conversation starts with the assistant; it must start with a user turn (after an "
     "optional system message)"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]},
     "f:3: messages[1]: two user turns in a row; user and assistant turns must alternate (merge the two messages "
     "into one)"),
])
def test_bad_conversations_name_row_and_message(row, message):
    with pytest.raises(DataError) as caught:
        row_to_messages(row, {}, None, "f:3")
    assert caught.value.problems == [message]


def test_completion_text_is_joined_with_eos_and_cut_into_blocks(tiny_tokenizer):
    tok = tiny_tokenizer
    first, second = "The capital of France is Paris. " * 3, "Rome is the capital of Italy. " * 3
    blocks = chunk([first, "   ", second], tok, 16)
    stream = pieces(tok, first)[0] + [tok.eos_token_id] + pieces(tok, second)[0] + [tok.eos_token_id]
    expected = [stream[i:i + 16] for i in range(0, len(stream), 16)]
    expected = [block for block in expected if len(block) >= 16]
    assert [b["input_ids"] for b in blocks] == expected
    assert all(b["labels"] == b["input_ids"] for b in blocks)


def test_a_template_that_refuses_a_conversation_is_one_line_naming_the_row(tiny_tokenizer):
    from tune.data.conversation import tokenize

    template = "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(DataError) as caught:
        tokenize(messages, tiny_tokenizer, template, where="f:3")
    assert caught.value.problems == ["f:3: the chat template refused this conversation (Conversation roles must "
                                     "alternate user/assistant/user/assistant); fix the row's turns, or set "
                                     "data.template: chatml"]


class CountingTokenizer:
    """The real tokenizer, recording the longest text it was asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, *args, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_message_is_cut_before_tokenizing_and_still_counts_as_over_length(tiny_tokenizer):
    from tune.data.conversation import MAX_CHARS_PER_TOKEN, LengthReport, fit_length, tokenize
    from tune.data.templates import resolve_template

    template, _ = resolve_template("chatml", tiny_tokenizer, None)
    counting = CountingTokenizer(tiny_tokenizer)
    messages = [{"role": "user", "content": "why?"}, {"role": "assistant", "content": "because " * 2_000_000}]
    example = tokenize(messages, counting, template, max_length=64, where="f:1")  # a 16 MB reply
    assert counting.longest < 64 * MAX_CHARS_PER_TOKEN + 100
    assert len(example.input_ids) > 64
    report = LengthReport()
    kept = fit_length(example, 64, "truncate", "f:1", report)
    whole = tokenize(messages[:1] + [{"role": "assistant", "content": "because " * 600}], tiny_tokenizer, template)
    assert kept.input_ids == whole.input_ids[:64] and report.truncated == 1  # the cut changed nothing kept


def test_a_long_document_is_tokenized_in_pieces_to_the_same_ids(tiny_tokenizer, monkeypatch):
    from tune.data import completion

    text = " ".join(f"word{i % 97} and more text" for i in range(3000))
    whole = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(completion, "PIECE_CHARS", 1000)
    counting = CountingTokenizer(tiny_tokenizer)
    assert completion.token_ids(text, counting) == whole
    assert counting.longest <= 1000
