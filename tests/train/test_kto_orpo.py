"""KTO (unpaired rows) and ORPO (pairs, no reference model) on the tiny model: they train, log their
preference metrics like DPO's, save a LoRA adapter, and refuse bad unpaired rows in one line."""

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, write_recipe
from tune import recipe as recipe_io
from tune.errors import TuneError
from tune.train.kto import train as kto_train
from tune.train.orpo import train as orpo_train

QUIET = {"echo": lambda line: None}


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]


def test_kto_trains_on_unpaired_rows_and_weights_the_two_kinds(tiny_model, tmp_path):
    rows = [json.loads(line) for line in (REPO / "data_templates" / "unpaired.jsonl").read_text().splitlines()]
    skewed = tmp_path / "skewed.jsonl"  # three desirable rows for every undesirable one
    skewed.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if r["label"] or i % 6 == 1))
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(skewed), "format": "unpaired", "eval_fraction": 0.2},
                        train={"method": "kto", "max_steps": 6, "eval_steps": 3})
    result = kto_train(recipe_io.load(path), path, **QUIET)
    logged = records(tmp_path)
    assert any("rewards/chosen" in r and "kl" in r for r in logged)
    assert any("eval_rewards/chosen" in r for r in logged)
    summary = result.summary
    assert summary["method"] == "kto" and summary["eval_reward_margin"] is not None
    # about 3 desirable rows per undesirable one in the train split: the rarer kind weighs about 3x
    assert summary["desirable_weight"] == 1.0 and 2.0 < summary["undesirable_weight"] < 4.5
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())


def test_orpo_lowers_the_loss_without_a_reference_and_logs_pair_accuracy(tiny_model, tmp_path):
    pairs = REPO / "data_templates" / "preference.jsonl"
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(pairs), "format": "preference", "eval": str(pairs),
                                                   "allow_eval_overlap": True},
                        train={"method": "orpo", "max_steps": 8, "eval_steps": 4})
    lines = []
    result = orpo_train(recipe_io.load(path), path, echo=lines.append)
    logged = records(tmp_path)
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses[-1] < losses[0]
    assert any("rewards/accuracies" in r and "log_odds_ratio" in r for r in logged)
    assert result.summary["eval_reward_accuracy"] is not None
    assert any("(no reference model)" in line for line in lines)


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "Hi", "completion": "Hello", "label": "maybe"}, "label must be true or false (desirable or not), got 'maybe'"),
    ({"prompt": "Hi", "completion": "", "label": True}, "completion must be one non-empty assistant reply"),
    ({"prompt": "Hi", "reply": "Hello", "label": True}, "missing column completion; row has ['label', 'prompt', 'reply'] "
                                                      "(map yours with data.columns.prompt / completion / label)"),
])
def test_a_bad_unpaired_row_is_one_line(row, expected, tmp_path):
    from tune.data.unpaired import row_to_example
    from tune.errors import DataError

    with pytest.raises(DataError) as caught:
        row_to_example(row, {}, None, "f.jsonl:row 3")
    assert caught.value.problems == [f"f.jsonl:row 3: {expected}"]


def test_kto_needs_both_kinds_of_rows(tiny_model, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Q{i}", "completion": f"A{i}", "label": True}) + "\n" for i in range(4)))
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(rows), "format": "unpaired"}, train={"method": "kto"})
    with pytest.raises(TuneError) as caught:
        kto_train(recipe_io.load(path), path, **QUIET)
    assert caught.value.problems == ["data.train: every row is desirable; KTO needs both desirable (label true) and "
                                     "undesirable (label false) completions"]
    assert not (tmp_path / "out").exists()


# Every preference method trains on the tokens SFT trains on, fitted to data.max_length by data.overlength.
# In tiny-llama tokens: pair 2's chosen reply is 73 tokens after a 12-token prompt (85 in all), pair 3's
# prompt alone is 84 (89 with its longer reply); the rest fit in 48.
PAIRS = [{"prompt": "What is 7 plus 8?", "chosen": "15.", "rejected": "16."},
         {"prompt": "Name a colour.", "chosen": "Blue, like the sky on a clear day. " * 3, "rejected": "Red."},
         {"prompt": "Tell me a story about a cat. " * 4, "chosen": "No.", "rejected": "Once."},
         {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco."}]
UNPAIRED = [{"prompt": "What is 7 plus 8?", "completion": "15.", "label": True},
            {"prompt": "What is 7 plus 8?", "completion": "16.", "label": False},
            {"prompt": "Name a colour.", "completion": PAIRS[1]["chosen"], "label": True},
            {"prompt": PAIRS[2]["prompt"], "completion": "Once.", "label": False},
            {"prompt": "Capital of Peru?", "completion": "Lima.", "label": True},
            {"prompt": "Capital of Peru?", "completion": "Cusco.", "label": False}]
# a trainer's row as (prompt + chosen, prompt + rejected, prompt tokens); a reward model sees whole sequences
SEQUENCES = {
    "dpo": lambda r: (r["prompt_ids"] + r["chosen_ids"], r["prompt_ids"] + r["rejected_ids"], len(r["prompt_ids"])),
    "orpo": lambda r: (r["chosen_input_ids"], r["rejected_input_ids"], r["chosen_labels"].count(-100)),
    "reward": lambda r: (r["chosen_ids"], r["rejected_ids"], None),
}


def built(method, rows, tmp_path, monkeypatch, **data):
    """(the trainer a run builds, the lines it printed); training itself is skipped."""
    from tune.train import run as skeleton
    from tune.train.methods import METHODS

    class Built(Exception):
        pass

    def stop(run, trainer, **kwargs):
        raise Built(trainer)

    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(path), "format": "unpaired" if method == "kto" else
                                                     "preference", "max_length": 48, **data}, train={"method": method})
    monkeypatch.setattr(skeleton, "fit", stop)
    lines = []
    with pytest.raises(Built) as caught:
        METHODS[method](recipe_io.load(recipe), recipe, echo=lines.append)
    return caught.value.args[0], lines


@pytest.mark.parametrize("method", ["dpo", "orpo", "reward"])
def test_every_preference_method_trains_on_the_sft_tokens_fitted_to_max_length(method, tiny_model, tiny_tokenizer,
                                                                               tmp_path, monkeypatch):
    from tune.data.preference import row_to_pair, tokenize_pair

    trainer, lines = built(method, PAIRS, tmp_path, monkeypatch)
    template = tiny_tokenizer.chat_template
    sft = [tokenize_pair(*row_to_pair(row, {}, None, "f"), tiny_tokenizer, template) for row in PAIRS]
    sft[1]["chosen_ids"] = sft[1]["chosen_ids"][:48 - 12]  # cut to the room the prompt leaves; pair 3 is dropped
    expected = [(p["prompt_ids"] + p["chosen_ids"], p["prompt_ids"] + p["rejected_ids"],
                 None if method == "reward" else len(p["prompt_ids"])) for p in (sft[0], sft[1], sft[3])]
    assert [SEQUENCES[method](row) for row in trainer.train_dataset] == expected
    assert tiny_tokenizer.decode(expected[0][0]).endswith("assistant\n15.<|im_end|>")  # the reply ends on its end token
    assert "data: 1 pairs truncated and 1 dropped (over data.max_length=48; longest 89 tokens)" in lines
    if method == "orpo":
        assert [row["rejected_labels"].count(-100) for row in trainer.train_dataset] == [14, 12, 14]


def test_kto_trains_on_the_sft_tokens_fitted_to_max_length(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    from tune.data.conversation import tokenize
    from tune.data.unpaired import row_to_example

    trainer, lines = built("kto", UNPAIRED, tmp_path, monkeypatch)
    expected = []
    for number, row in enumerate(UNPAIRED):
        example = row_to_example(row, {}, None, "f")
        sft = tokenize(example["prompt"] + example["completion"], tiny_tokenizer, tiny_tokenizer.chat_template,
                       "last_assistant")  # as SFT tokenizes it: the reply starts where SFT's loss does
        cut = sft.prompt_tokens
        if number != 3:  # the 84-token prompt leaves no room for its reply
            expected.append((sft.input_ids[:cut], sft.input_ids[cut:48], row["label"]))
    rows = list(trainer.train_dataset)
    assert sorted((r["prompt_ids"], r["completion_ids"], r["label"]) for r in rows) == sorted(expected)
    assert tiny_tokenizer.decode(expected[0][1]) == "15.<|im_end|>"  # the reply ends on its end token
    assert "data: 1 rows truncated and 1 dropped (over data.max_length=48; longest 89 tokens)" in lines
    # TRL's KL rows, as it builds them: within a batch, each prompt with the previous row's completion
    completions = [r["completion_ids"] for r in rows]
    assert [r["KL_completion_ids"] for r in rows] == completions[-1:] + completions[:-1]


@pytest.mark.parametrize("method", ["dpo", "orpo", "reward", "kto"])
def test_overlength_drop_and_error_hold_for_every_preference_method(method, tiny_model, tmp_path, monkeypatch):
    rows, over, noun = (UNPAIRED, 3, "rows") if method == "kto" else (PAIRS, 2, "pairs")
    trainer, lines = built(method, rows, tmp_path, monkeypatch, overlength="drop")
    assert len(trainer.train_dataset) == len(rows) - 2
    assert f"data: 0 {noun} truncated and 2 dropped (over data.max_length=48; longest 89 tokens)" in lines
    with pytest.raises(TuneError) as caught:
        built(method, rows, tmp_path / "error", monkeypatch, overlength="error")
    assert caught.value.problems == [f"{tmp_path / 'error' / 'rows.jsonl'}:row {over}: 85 tokens, over "
                                     "data.max_length=48 (raise max_length, or set data.overlength: truncate or drop)"]
    assert not (tmp_path / "error" / "out").exists()
