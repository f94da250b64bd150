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


def test_predict_presents_the_prompt_as_training_did(reward_run, tmp_path):
    # before: the row's system column, the run's data.system_prompt and its data.columns were ignored
    import shutil

    import yaml

    from tune.infer.reward_model import load_reward_model, score

    out = reward_run[0] / "out"
    note, shout = "Sure, here is a short note about the river. Thank you.", "NO!!! RIVER??? NO!!!"
    user = {"role": "user", "content": "Tell me about the river."}
    model, tokenizer, max_length = load_reward_model(out)

    def predicted(run, rows):
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        result = CliRunner().invoke(app, ["predict", str(run), "--data", str(tmp_path / "rows.jsonl"),
                                          "--out", str(tmp_path / "scores.jsonl")])
        assert result.exit_code == 0, result.output + result.stderr
        return [json.loads(line)["reward"] for line in (tmp_path / "scores.jsonl").read_text().splitlines()]

    def expected(system, reply):
        return score(model, tokenizer, [[{"role": "system", "content": system}, user,
                                         {"role": "assistant", "content": reply}]], max_length)[0]

    got = predicted(out, [{"prompt": user["content"], "completion": note, "system": "Shout at me."}])
    assert got == pytest.approx([expected("Shout at me.", note)], abs=1e-5)
    assert got != pytest.approx(score(model, tokenizer, [[user, {"role": "assistant", "content": note}]], max_length),
                                abs=1e-3)  # the system turn changes the score: the test can tell

    run = tmp_path / "run"  # the same model, as if trained with a system prompt and its own column names
    shutil.copytree(out, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"] |= {"system_prompt": "Be kind.", "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"question": user["content"], "good": note, "bad": shout}) + "\n")
    result = CliRunner().invoke(app, ["predict", str(run), "--data", str(tmp_path / "rows.jsonl"),
                                      "--out", str(tmp_path / "scores.jsonl")])
    assert result.exit_code == 0, result.output + result.stderr
    row = json.loads((tmp_path / "scores.jsonl").read_text())
    assert [row["reward_chosen"], row["reward_rejected"]] == pytest.approx(
        [expected("Be kind.", note), expected("Be kind.", shout)], abs=1e-5)


def test_a_reward_model_that_would_score_cut_completions_is_named_with_numbers(reward_run, tmp_path):
    from tune.infer.reward_model import length_findings

    out = reward_run[0] / "out"  # trained with data.max_length 64

    def findings(rows, completion, weight=1):
        (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        source = [{"path": str(tmp_path / "prompts.jsonl"), "weight": weight}]
        path = write_recipe(tmp_path / "g.yaml", data={"train": source, "format": "prompt"},
                            train={"method": "grpo"}, reward={"model": str(out)},
                            grpo={"num_generations": 4, "max_completion_length": completion})
        return length_findings(recipe_io.load(path), tmp_path)

    rows = [{"prompt": "Tell me about the river."}, {"prompt": "Tell me about the stone, the cloud and the apple."}]
    assert findings(rows, 16) == ([], [])
    assert findings(rows, 40, weight=2) == ([], [  # prompts counted once, however often a weight repeats them
        f"reward.model: {out} scores 64 tokens at most (its data.max_length): 1 of 2 prompts plus "
        f"grpo.max_completion_length 40 go over it (longest {tmp_path / 'prompts.jsonl'}:row 2: 33 tokens with the "
        "chat template, leaving 31 for the completion), so the end of a longer completion would not be scored; "
        "lower grpo.max_completion_length to 31, or train the reward model with data.max_length 73"])
    assert findings(rows + [{"prompt": " ".join(WORDS * 3)}], 16) == ([
        f"reward.model: {out} scores 64 tokens at most (its data.max_length), but the prompt "
        f"{tmp_path / 'prompts.jsonl'}:row 3 takes 166 with the chat template, so it would read none of that prompt's "
        "completions; shorten the prompt, or train the reward model with data.max_length 182"], [])
    hub = write_recipe(tmp_path / "g.yaml", data={"train": "org/prompts", "format": "prompt"}, train={"method": "grpo"},
                       reward={"model": str(out)}, grpo={"num_generations": 4, "max_completion_length": 64})
    assert length_findings(recipe_io.load(hub), tmp_path) == ([], [  # validate downloads nothing: no prompt to measure
        f"reward.model: {out} scores 64 tokens at most (its data.max_length); grpo.max_completion_length 64 alone "
        "reaches it, so a long completion would be scored on its beginning only"])
    path = write_recipe(tmp_path / "g.yaml", data={"train": str(tmp_path / "prompts.jsonl"), "format": "prompt"},
                        train={"method": "grpo"}, reward={"model": str(tmp_path)})
    assert length_findings(recipe_io.load(path), tmp_path) == ([
        f"reward.model: {tmp_path} is not a finished tune run, not a reward model (give the output dir of a "
        "`train.method: reward` run)"], [])
    # validate and run make this check through the one list of findings they share
    from tune.train.checks import findings as shared

    rows.append({"prompt": " ".join(WORDS * 3)})
    problems, _ = findings(rows, 16)
    assert shared(recipe_io.load(tmp_path / "g.yaml"), tmp_path)[0] == problems and len(problems) == 1
