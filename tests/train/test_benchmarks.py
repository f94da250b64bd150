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


def test_kept_by_tasks_counts_the_bases_right_items_still_right(monkeypatch):
    from tune.train import benchmarks
    from tune.train.guard import Evaluation

    now = {"t/0": True, "t/1": False, "t/2": True, "t/3": False}
    monkeypatch.setattr(benchmarks, "_items", lambda prepared, recipe, model, tokenizer: now)
    probes_only = lambda policy, step: Evaluation(step, 0.7, {"unseen": 0.7}, kept=1.0)  # noqa: E731
    measure = benchmarks.kept_by_tasks(probes_only, ("manager", ["t"]), None, None,
                                       base={"t/0": True, "t/1": True, "t/2": False, "t/3": False})
    evaluation = measure("policy", 5)
    assert (evaluation.step, evaluation.score, evaluation.kept) == (5, 0.7, 0.5)  # t/0 kept, t/1 lost; t/2 not counted
    assert benchmarks.kept_by_tasks(probes_only, None, None, None, base=None) is probes_only


@pytest.mark.slow
def test_an_sft_guard_keeps_by_task_items(tiny_model, tmp_path):
    from tune.train.sft import train

    probes = REPO / "data_templates" / "smollm2-domain" / "probes-general.jsonl"
    path = write_recipe(tmp_path / "r.yaml", data={"probes": [str(probes)]},
                        train={"max_steps": 4, "eval_steps": 2, "keep": "best", "min_kept_share": 0.0,
                               "eval_tasks": [KNOWLEDGE], "eval_tasks_limit": 8, "kept_by": "tasks"})
    lines = []
    summary = train(recipe_io.load(path, []), path, echo=lines.append).summary
    base_line = next(line for line in lines if line.startswith("guard: keeps the base's right eval_tasks items ("))
    right = int(base_line.split("(")[1].split()[0])
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    kept = [r["probes_kept"] for r in records if "probes_kept" in r]
    assert len(kept) == 2 and all(round(share * right) == pytest.approx(share * right) for share in kept)
    assert "eval_tasks items kept" in summary["kept"] or summary["kept"].startswith("kept the final weights")
