"""Pairwise accuracy (reward models, DPO, ORPO) is wins over all pairs: an evaluation in batches of 4 + 1
reports what one batch holding all five pairs reports (TRL's mean of the two batch means did not), and a
tie is no win."""

import json

import pytest

from tests.conftest import REPO, write_recipe
from tune import recipe as recipe_io
from tune.train import run as skeleton
from tune.train.methods import METHODS

PAIRS = [json.loads(line) for line in (REPO / "data_templates" / "preference.jsonl").read_text().splitlines()]
# (method, the key the trainer logs, the summary key that reports the held-out accuracy)
CASES = [("reward", "eval_accuracy", "eval_pairwise_accuracy"),
         ("dpo", "eval_rewards/accuracies", "eval_reward_accuracy"),
         ("orpo", "eval_rewards/accuracies", "eval_reward_accuracy")]


def keep_trainers(monkeypatch) -> list:
    """The trainers the run builds, kept for the test to evaluate again."""
    trainers, attach = [], skeleton.attach
    monkeypatch.setattr(skeleton, "attach", lambda run, trainer, **kw: trainers.append(trainer) or attach(run, trainer,
                                                                                                        **kw))
    return trainers


@pytest.mark.parametrize("method, logged, reported", CASES)
def test_held_out_pair_accuracy_counts_every_pair_once(method, logged, reported, tiny_model, tmp_path, monkeypatch):
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held_out.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in PAIRS[:16]))
    held_out.write_text("".join(json.dumps(row) + "\n" for row in PAIRS[16:21]))  # batches of 4 + 1
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(train), "eval": str(held_out), "format": "preference",
                                                   "max_length": 64},
                        train={"method": method, "max_steps": 3, "batch_size": 4, "learning_rate": 5e-3})
    trainers = keep_trainers(monkeypatch)
    result = METHODS[method](recipe_io.load(path), path, echo=lambda line: None)
    trainer = trainers[0]
    trainer.args.per_device_eval_batch_size = 5  # all five pairs in one batch: TRL's own mean over them
    whole = trainer.evaluate()[logged]
    assert result.summary[reported] == whole
    if method == "dpo":  # step 1 scores before any update: policy == reference, every pair a tie
        first = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
        assert first["step"] == 1 and first["rewards/margins"] == 0.0 and first["rewards/accuracies"] == 0.0


def test_a_logged_training_step_counts_every_pair_since_the_last_one(tiny_model, tmp_path, monkeypatch):
    # 18 pairs in batches of 4: step 1 (logged alone) and steps 2-5 (4 + 4 + 4 + 2 pairs, one line, with
    # held-out evaluations between) cover each pair once. A learning rate this small leaves every score as
    # it was, so the two lines together must say what one batch of all 18 says after training.
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held_out.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in PAIRS[:18]))
    held_out.write_text("".join(json.dumps(row) + "\n" for row in PAIRS[18:23]))
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(train), "eval": str(held_out), "format": "preference",
                                                   "max_length": 64},
                        train={"method": "reward", "max_steps": 5, "batch_size": 4, "learning_rate": 1e-12,
                               "logging_steps": 5, "eval_steps": 2})
    trainers = keep_trainers(monkeypatch)
    METHODS["reward"](recipe_io.load(path), path, echo=lambda line: None)
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "accuracy" in r]
    assert [r["step"] for r in logged] == [1, 5]  # logging_first_step, then the window of steps 2-5
    trainer = trainers[0]
    trainer.args.per_device_eval_batch_size = 18
    whole = trainer.evaluate(eval_dataset=trainer.train_dataset)["eval_accuracy"]
    assert (logged[0]["accuracy"] * 4 + logged[1]["accuracy"] * 14) / 18 == pytest.approx(whole, abs=1e-9)
