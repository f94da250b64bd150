"""The `preference` format: text and chat-message rows render to the same exact tokens, column mapping,
and bad pairs (chosen == rejected, an empty side) are one line each: a stop, or dropped on request."""

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, write_recipe
from tune.cli import app
from tune.data.preference import BadPair, prepare_pairs, row_to_pair, tokenize_pair
from tune.errors import DataError, TuneError
from tune.recipe import DataSection

PREFIX = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 7 plus 8?<|im_end|>\n<|im_start|>assistant\n"


def decoded(pair, tokenizer):
    return {key: tokenizer.decode(ids) for key, ids in pair.items()}


def test_text_row_renders_with_the_chat_template(tiny_tokenizer):
    row = {"prompt": "What is 7 plus 8?", "chosen": "15.", "rejected": "16.", "system": "Be brief."}
    pair = tokenize_pair(*row_to_pair(row, {}, None, "f:row 1"), tiny_tokenizer, tiny_tokenizer.chat_template)
    assert decoded(pair, tiny_tokenizer) == {"prompt_ids": PREFIX, "chosen_ids": "15.<|im_end|>",
                                             "rejected_ids": "16.<|im_end|>"}


def test_message_rows_and_mapped_columns_give_the_same_tokens(tiny_tokenizer):
    text = {"prompt": "What is 7 plus 8?", "chosen": "15.", "rejected": "16."}
    messages = {"question": [{"role": "user", "content": "What is 7 plus 8?"}],
                "good": [{"role": "assistant", "content": "15."}], "bad": [{"role": "assistant", "content": "16."}]}
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    template = tiny_tokenizer.chat_template
    from_text = tokenize_pair(*row_to_pair(text, {}, "Be brief.", "f:row 1"), tiny_tokenizer, template)
    from_messages = tokenize_pair(*row_to_pair(messages, columns, "Be brief.", "f:row 2"), tiny_tokenizer, template)
    assert from_text == from_messages
    assert tiny_tokenizer.decode(from_text["prompt_ids"]) == PREFIX


def test_multi_turn_prompt_keeps_earlier_replies_in_the_prompt(tiny_tokenizer):
    row = {"prompt": [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima."},
                      {"role": "user", "content": "And Norway?"}], "chosen": "Oslo.", "rejected": "Bergen."}
    pair = decoded(tokenize_pair(*row_to_pair(row, {}, None, "f:row 1"), tiny_tokenizer,
                                 tiny_tokenizer.chat_template), tiny_tokenizer)
    assert pair["prompt_ids"].endswith("Lima.<|im_end|>\n<|im_start|>user\nAnd Norway?<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    assert (pair["chosen_ids"], pair["rejected_ids"]) == ("Oslo.<|im_end|>", "Bergen.<|im_end|>")


@pytest.mark.parametrize("row, line", [
    ({"prompt": "Hi", "chosen": "Same.", "rejected": " Same. "},
     "f:row 3: chosen and rejected are the same text, so the pair teaches nothing"),
    ({"prompt": "Hi", "chosen": "", "rejected": "No."}, "f:row 3: chosen is empty, so the pair teaches nothing"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": [{"role": "assistant", "content": " "}]},
     "f:row 3: rejected is empty, so the pair teaches nothing"),
])
def test_bad_pairs_are_named(row, line):
    with pytest.raises(BadPair) as caught:
        row_to_pair(row, {}, None, "f:row 3")
    assert caught.value.problems == [line + " (fix the row, or set data.drop_bad_pairs: true to skip such rows)"]


def test_malformed_rows_are_not_droppable():
    with pytest.raises(DataError) as caught:
        row_to_pair({"prompt": "Hi", "chosen": "Yes."}, {}, None, "f:row 4")
    assert not isinstance(caught.value, BadPair)
    assert caught.value.problems == ["f:row 4: missing column rejected; row has ['chosen', 'prompt'] "
                                     "(map yours with data.columns.prompt / chosen / rejected)"]
    with pytest.raises(DataError, match="f:row 5: prompt must end with a user message"):
        row_to_pair({"prompt": [{"role": "assistant", "content": "Hi"}], "chosen": "a", "rejected": "b"}, {}, None,
                    "f:row 5")


def bad_file(tmp_path):
    rows = [json.loads(line) for line in (REPO / "data_templates" / "preference.jsonl").read_text().splitlines()]
    rows[4] = {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "4."}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, len(rows)


def test_drop_bad_pairs_skips_and_counts(tmp_path, tiny_tokenizer):
    path, rows = bad_file(tmp_path)
    data = DataSection(train=str(path), format="preference", drop_bad_pairs=True)
    prepared = prepare_pairs(data, tiny_tokenizer, tiny_tokenizer.chat_template, None, 0)
    assert len(prepared.train) == rows - 1 and prepared.fingerprint["bad_pairs_dropped"] == 1
    assert prepared.notes[0].startswith(f"dropped 1 bad pairs (data.drop_bad_pairs), first: {path}:row 5: chosen")
    with pytest.raises(TuneError) as caught:
        prepare_pairs(DataSection(train=str(path), format="preference"), tiny_tokenizer,
                      tiny_tokenizer.chat_template, None, 0)
    assert caught.value.problems == [f"{path}:row 5: chosen and rejected are the same text, so the pair teaches "
                                     "nothing (fix the row, or set data.drop_bad_pairs: true to skip such rows)"]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_bad_row_is_one_line_and_exit_2_through_the_cli(command, tiny_model, tmp_path):
    path, _ = bad_file(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(path), "format": "preference"},
                          train={"method": "dpo"})
    result = CliRunner().invoke(app, [command, str(recipe)])
    prefix = f"{recipe}: " if command == "validate" else ""
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"{prefix}{path}:row 5: chosen and rejected are the same text, so the pair teaches "
                             "nothing (fix the row, or set data.drop_bad_pairs: true to skip such rows)\n")
    assert not (tmp_path / "out").exists()
    dropped = CliRunner().invoke(app, ["validate", str(recipe), "--set", "data.drop_bad_pairs=true"])
    assert dropped.exit_code == 0, dropped.output


@pytest.mark.parametrize("override, line", [
    ("train.loss_type=sigmod", "train.loss_type: 'sigmod' is not a DPO loss; did you mean 'sigmoid'?"),
    ("train.method=sft", "data.format: preference rows are for train.method: dpo or orpo or reward, not sft"),
    ("train.method=kto", "train.method: kto needs data.format: unpaired, not preference"),
    ("model.adapter=runs/sft", "--set model.adapter=runs/sft: model.adapter: continuing a trained adapter is "
                               "supported for train.method: dpo or grpo, not sft"),
])
def test_preference_keys_are_checked(override, line, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data={"format": "preference"}, train={"method": "dpo"})
    extra = ["--set", "train.method=sft", "--set", "data.format=instruction"] if "adapter" in override else []
    result = CliRunner().invoke(app, ["validate", str(recipe), "--set", override, *extra])
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and line in result.stderr, result.stderr
