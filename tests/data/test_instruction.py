import pytest

from tune.data.conversation import LengthReport, Tokenized, fit_length, tokenize
from tune.data.instruction import row_to_messages
from tune.data.templates import builtin_templates
from tune.errors import DataError

ROW = {"instruction": "What is the capital of France?", "output": "The capital of France is Paris."}


def test_alpaca_row_becomes_messages_with_input_and_system():
    row = {"instruction": "Translate the colour into French.", "input": "red", "output": "rouge"}
    assert row_to_messages(row, {}, "Be brief.", "f:1") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Translate the colour into French.\n\nred"},
        {"role": "assistant", "content": "rouge"},
    ]


def test_prompt_completion_row_and_column_mapping():
    row = {"question": "2+2?", "answer": "4"}
    messages = row_to_messages(row, {"prompt": "question", "completion": "answer"}, None, "f:1")
    assert messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_missing_column_names_file_row_and_column():
    with pytest.raises(DataError) as caught:
        row_to_messages({"instruction": "hi"}, {}, None, "data.jsonl:row 3")
    assert caught.value.problems == [
        "data.jsonl:row 3: missing or empty column 'output' (map yours with data.columns.output)"]


def test_unusable_row_lists_what_it_has():
    with pytest.raises(DataError) as caught:
        row_to_messages({"q": "hi", "a": "yo"}, {}, None, "d.csv:row 1")
    assert caught.value.problems == [
        "d.csv:row 1: needs columns instruction+output or prompt+completion; row has ['a', 'q'] "
        "(map yours with data.columns)"]


def test_non_string_value_is_an_error():
    with pytest.raises(DataError) as caught:
        row_to_messages({"instruction": "x", "output": 42}, {}, None, "d.jsonl:row 9")
    assert caught.value.problems == ["d.jsonl:row 9: column 'output' must be text, got int"]


def test_chatml_labels_are_masked_exactly_on_the_prompt(tiny_tokenizer):
    """The tiny tokenizer has pad == eos (it ships no pad token): EOS must still be a label."""
    tok = tiny_tokenizer
    messages = row_to_messages(ROW, {}, None, "f:1")
    example = tokenize(messages, tok, tok.chat_template)

    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    response = "The capital of France is Paris.<|im_end|>"
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + response_ids
    assert example.labels == [-100] * len(prompt_ids) + response_ids
    assert example.labels[-1] == tok.eos_token_id == tok.pad_token_id
    assert example.prompt_tokens == len(prompt_ids)


def test_alpaca_template_ends_response_with_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    template = builtin_templates()["alpaca"].read_text()
    messages = row_to_messages({"instruction": "Say hi.", "input": "politely", "output": "Hello!"}, {}, None, "f:1")
    example = tokenize(messages, tok, template)
    prompt = "### Instruction:\nSay hi.\n\npolitely\n\n### Response:\n"
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(example.input_ids) == prompt + "Hello!<|im_end|>"
    assert example.labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert example.labels[len(prompt_ids):] == example.input_ids[len(prompt_ids):]
    assert example.labels[-1] == tok.eos_token_id


def test_eos_is_appended_when_the_template_has_no_end_token(tiny_tokenizer):
    tok = tiny_tokenizer
    bare = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    example = tokenize([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tok, bare)
    assert example.input_ids[-1] == tok.eos_token_id and example.labels[-1] == tok.eos_token_id
    assert example.labels.count(-100) == example.prompt_tokens


def test_train_on_all_keeps_every_token(tiny_tokenizer):
    tok = tiny_tokenizer
    example = tokenize(row_to_messages(ROW, {}, None, "f:1"), tok, tok.chat_template, train_on="all")
    assert example.labels == example.input_ids


def test_length_policies():
    long = Tokenized(list(range(10)), [-100] * 4 + list(range(4, 10)), 4)
    report = LengthReport()
    cut = fit_length(long, 6, "truncate", "f:1", report)
    assert cut.input_ids == [0, 1, 2, 3, 4, 5] and cut.labels == [-100] * 4 + [4, 5]
    assert fit_length(long, 6, "drop", "f:2", report) is None
    assert fit_length(long, 3, "truncate", "f:3", report) is None  # the prompt alone fills max_length
    assert (report.truncated, report.dropped, report.rows_over) == (1, 2, ["f:1", "f:2", "f:3"])
    with pytest.raises(DataError) as caught:
        fit_length(long, 6, "error", "f:4", report)
    assert caught.value.problems == [
        "f:4: 10 tokens, over data.max_length=6 (raise max_length, or set data.overlength: truncate or drop)"]
