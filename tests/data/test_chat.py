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
