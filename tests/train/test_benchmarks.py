"""train.eval_tasks: a run scores lm-eval tasks after training, on the kept adapter and on its base (the
adapter switched off), and a task it cannot score stops the run before training, in one line."""

import json

import pytest

from tests.conftest import REPO, write_recipe
from tune import recipe as recipe_io
from tune.errors import TuneError

KNOWLEDGE = "data_templates/eval/general-knowledge.yaml"  # found in the bundled files from anywhere


def test_a_run_scores_its_tasks_beside_the_base(tiny_model, tmp_path):
    from tests.infer.test_harness import preferred_share
    from tune.infer.generate import load_for_inference
    from tune.train.sft import train

    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 4, "eval_tasks": [KNOWLEDGE]})
    lines = []
    summary = train(recipe_io.load(path, []), path, echo=lines.append).summary
    out = tmp_path / "out"
    saved = json.loads((out / "eval" / "lm-eval.json").read_text())["tasks"]["tune_general_knowledge"]
    assert summary["eval_tasks"]["tune_general_knowledge"] == {"base": saved["base"], "tuned": saved["tuned"]}
    model, tokenizer = load_for_inference(out)
    assert saved["tuned"]["acc"] == pytest.approx(preferred_share(model, tokenizer))
    with model.disable_adapter():
        assert saved["base"]["acc"] == pytest.approx(preferred_share(model, tokenizer))
    assert "eval tasks: tune_general_knowledge after training, on the base and the kept adapter" in lines
    assert any(line.startswith("| tune_general_knowledge | acc | ") for line in lines)


def test_bad_tasks_stop_before_training(tiny_model, tmp_path):
    from tune.train.checks import findings
    from tune.train.sft import train

    path = write_recipe(tmp_path / "r.yaml", train={"eval_tasks": ["missing/tasks.yaml"]})
    assert findings(recipe_io.load(path, []), tmp_path)[0] == [
        "train.eval_tasks[0]: no such task file: missing/tasks.yaml"]
    broken = tmp_path / "broken.yaml"
    broken.write_text((REPO / KNOWLEDGE).read_text().replace("general-knowledge.jsonl", "gone.jsonl"))
    path = write_recipe(tmp_path / "r.yaml", train={"eval_tasks": [str(broken)]})
    with pytest.raises(TuneError) as caught:
        train(recipe_io.load(path, []), path, echo=lambda line: None)
    assert caught.value.problems == [f"train.eval_tasks: task tune_general_knowledge: a data file it names is missing "
                                     f"(Unable to find '{tmp_path / 'gone.jsonl'}')"]
    assert not (tmp_path / "out" / "checkpoints").exists() or not any((tmp_path / "out" / "checkpoints").iterdir())


def test_classifiers_and_sharded_runs_refuse_eval_tasks(tmp_path):
    from tune.errors import RecipeError

    path = write_recipe(tmp_path / "r.yaml", train={"eval_tasks": [KNOWLEDGE]}, distributed={"strategy": "fsdp"})
    with pytest.raises(RecipeError) as caught:
        recipe_io.load(path, [])
    assert "train.eval_tasks: the tasks are scored on rank 0 alone, which fsdp's sharded weights cannot do" in str(caught.value)
    path = write_recipe(tmp_path / "c.yaml", train={"method": "classify", "eval_tasks": [KNOWLEDGE]},
                        data={"format": "classification", "train": str(REPO / "data_templates" / "sentiment_train.jsonl")})
    with pytest.raises(RecipeError) as caught:
        recipe_io.load(path, [])
    assert str(caught.value).endswith(
        "train.eval_tasks: lm-eval tasks score a model that writes text; train.method: classify trains a classifier "
        "head; remove train.eval_tasks")
