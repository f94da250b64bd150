"""Reward models on the tiny model: separable pairs are ranked right on held-out pairs, `tune predict` scores
rows with the same numbers, and a GRPO recipe optimizes its score; anything else named as a reward model
is one line."""

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import write_recipe
from tests.train.test_grpo import PROMPTS
from tune import recipe as recipe_io
from tune.cli import app
from tune.errors import TuneError
from tune.train.grpo import train as grpo_train
from tune.train.reward import train as reward_train

WORDS = ["river", "stone", "cloud", "apple", "green", "music", "paper", "light", "winter", "table", "horse",
         "glass", "bread", "chair", "ocean", "piano"]


def separable_pairs(path, count, offset=0):
    # chosen replies are calm and polite, rejected ones shout: a reward model must tell them apart on new words
    rows = [{"prompt": f"Tell me about the {WORDS[(i + offset) % len(WORDS)]}.",
             "chosen": f"Sure, here is a short note about the {WORDS[(i + offset) % len(WORDS)]}. Thank you.",
             "rejected": f"NO!!! {WORDS[(i + offset) % len(WORDS)].upper()}??? NO!!!"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def reward_recipe(tmp_path, **sections):
    train = separable_pairs(tmp_path / "pairs.jsonl", 12)
    held_out = separable_pairs(tmp_path / "held_out.jsonl", 4, offset=12)
    sections["data"] = {"train": str(train), "eval": str(held_out), "format": "preference", "max_length": 64}
    sections["train"] = {"method": "reward", "max_steps": 12, "learning_rate": 5e-3, "batch_size": 4,
                         "logging_steps": 1} | sections.get("train", {})
    return write_recipe(tmp_path / "r.yaml", **sections)


@pytest.fixture(scope="module")
def reward_run(tiny_model, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reward")
    path = reward_recipe(tmp_path)
    lines = []
    result = reward_train(recipe_io.load(path), path, echo=lines.append)
    return tmp_path, result, lines


def test_separable_pairs_are_ranked_right_on_held_out_pairs(reward_run):
    tmp_path, result, lines = reward_run
    assert result.summary["method"] == "reward"
    assert result.summary["eval_pairwise_accuracy"] == 1.0
    assert result.summary["first_loss"] > result.summary["last_loss"]
    assert any(line.startswith("held-out pairs: the chosen reply scores higher in 100%") for line in lines)
    out = tmp_path / "out"
    assert json.loads((out / "labels.json").read_text())["reward_model"] is True
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "reward"}


def test_predict_scores_pairs_and_completions(reward_run):
    tmp_path, _, _ = reward_run
    scores = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--data", str(tmp_path / "held_out.jsonl"),
                                      "--out", str(scores)])
    assert result.exit_code == 0, result.output + result.stderr
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 4 and all(row["prefers_chosen"] for row in rows)
    assert all(row["reward_chosen"] > row["reward_rejected"] for row in rows)
    singles = tmp_path / "singles.jsonl"
    singles.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), "--data", str(singles), "--out", str(scores)])
    assert result.exit_code == 0, result.output + result.stderr
    again = [json.loads(line)["reward"] for line in scores.read_text().splitlines()]
    assert again == pytest.approx([row["reward_chosen"] for row in rows], abs=1e-5)  # same text, same score


def test_grpo_optimizes_a_reward_model_and_refuses_a_run_that_is_not_one(reward_run, tmp_path):
    reward_dir = reward_run[0] / "out"
    recipe = {"data": {"train": str(PROMPTS), "format": "prompt", "eval_fraction": 0.25},
              "train": {"method": "grpo", "max_steps": 2, "batch_size": 8},
              "reward": {"model": str(reward_dir)}, "grpo": {"num_generations": 4, "max_completion_length": 8}}
    path = write_recipe(tmp_path / "g.yaml", **recipe)
    result = grpo_train(recipe_io.load(path), path, echo=lambda line: None)
    assert result.summary["rewards"][0]["model"] == str(reward_dir.resolve())
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/reward_model/mean" in r for r in records)

    recipe["reward"]["model"] = str(tmp_path / "out")  # the GRPO run just made: not a reward model
    recipe["output"] = {"dir": str(tmp_path / "second")}
    path = write_recipe(tmp_path / "g2.yaml", **recipe)
    with pytest.raises(TuneError) as caught:
        grpo_train(recipe_io.load(path), path, echo=lambda line: None)
    assert caught.value.problems == [f"reward.model: {tmp_path / 'out'} is a train.method: grpo run, not a reward "
                                     "model (give the output dir of a `train.method: reward` run)"]
    assert not (tmp_path / "second").exists()
