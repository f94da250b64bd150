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
