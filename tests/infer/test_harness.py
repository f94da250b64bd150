"""`tune eval --tasks` through lm-evaluation-harness, offline: the bundled local multiple-choice task scores
what the model itself prefers (each choice's log-likelihood computed here, independently), --compare-base
scores the base with the adapter switched off, results land in eval/, and every bad input is one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_recipe

TASKS = REPO / "data_templates" / "eval"
KNOWLEDGE = TASKS / "general-knowledge.yaml"


def tune(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "tune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def preferred_share(model, tokenizer) -> float:
    """The share of general-knowledge.jsonl rows whose right choice is the likeliest continuation of the
    task's prompt, as lm-eval defines a multiple-choice score (acc): sum of the choice tokens' log-probs."""
    import torch

    rows = [json.loads(line) for line in (TASKS / "general-knowledge.jsonl").read_text().splitlines()]
    right = 0
    with torch.no_grad():
        for row in rows:
            context = f"Question: {row['question']}\nAnswer:"
            start = len(tokenizer.encode(context))
            scores = []
            for choice in row["choices"]:
                ids = tokenizer.encode(f"{context} {choice}")
                logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
                scores.append(sum(float(logits[i - 1, ids[i]]) for i in range(start, len(ids))))
            right += scores.index(max(scores)) == row["answer"]
    return right / len(rows)


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    from tune import recipe as recipe_io
    from tune.train.sft import train

    path = write_recipe(tmp_path_factory.mktemp("harness") / "r.yaml", train={"max_steps": 6})
    train(recipe_io.load(path, []), path, echo=lambda line: None)
    return path.parent / "out"


def test_a_local_task_scores_the_choice_the_model_prefers(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.infer.harness import evaluate_tasks

    report = evaluate_tasks(str(tiny_model), [str(KNOWLEDGE)], [], echo=lambda line: None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    expected = preferred_share(model, AutoTokenizer.from_pretrained(tiny_model))
    entry = report["tasks"]["tune_general_knowledge"]
    assert entry["samples"] == 24 and entry["tuned"]["acc"] == pytest.approx(expected)
    assert 0 < entry["tuned"]["acc_stderr"] < 0.2


@pytest.mark.slow
def test_compare_base_scores_the_run_and_its_base_side_by_side(tiny_run, tiny_model):
    from tune.infer.generate import load_for_inference

    result = tune("eval", tiny_run, "--tasks", f"{KNOWLEDGE},{TASKS / 'short-answers.yaml'}", "--compare-base")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tiny_run / "eval" / "lm-eval.json").read_text())
    knowledge = saved["tasks"]["tune_general_knowledge"]
    model, tokenizer = load_for_inference(tiny_run)
    assert knowledge["tuned"]["acc"] == pytest.approx(preferred_share(model, tokenizer))
    with model.disable_adapter():
        assert knowledge["base"]["acc"] == pytest.approx(preferred_share(model, tokenizer))
    assert "exact_match[trimmed]" in saved["tasks"]["tune_short_answers"]["tuned"]
    change = knowledge["tuned"]["acc"] - knowledge["base"]["acc"]
    assert (f"| tune_general_knowledge | acc | {knowledge['base']['acc']:.4f} | {knowledge['tuned']['acc']:.4f} ± "
            f"{knowledge['tuned']['acc_stderr']:.4f} | {change:+.4f} |") in result.stdout.splitlines()
    assert (tiny_run / "eval" / "lm-eval.md").read_text().splitlines()[2:] == result.stdout.splitlines()[2:]
    assert f"wrote {tiny_run / 'eval' / 'lm-eval.json'}" in result.stderr


def test_answers_to_a_data_file_are_scored_and_saved_row_by_row(tiny_run):
    data = REPO / "data_templates" / "instruction.jsonl"
    result = tune("eval", tiny_run, "--data", data, "--generate", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tiny_run / "eval" / "answers-instruction.jsonl").read_text().splitlines()]
    written = json.loads((tiny_run / "eval" / "generation-instruction.json").read_text())
    assert len(rows) == written["examples"] == len(data.read_text().splitlines())
    assert written["sampling"]["temperature"] == 0.0 and set(rows[0]) >= {"prompt", "reference", "answer", "rouge_l"}
    assert written["scores"]["rouge_l"] == pytest.approx(sum(row["rouge_l"] for row in rows) / len(rows))
    assert f"ROUGE-L {written['scores']['rouge_l']:.4f}" in result.stdout


def test_bad_task_specs_are_one_line_each(tiny_model, tmp_path):
    missing_data = tmp_path / "broken.yaml"
    missing_data.write_text(KNOWLEDGE.read_text().replace("general-knowledge.jsonl", "nowhere.jsonl"))
    not_a_task = tmp_path / "plain.yaml"
    not_a_task.write_text("hello: world\n")
    cases = {
        "nope.yaml": "--tasks nope.yaml: no such task file",
        str(not_a_task): f"--tasks {not_a_task}: a task YAML needs a `task:` name (lm-eval's task format)",
    }
    for spec, line in cases.items():
        result = tune("eval", tiny_model, "--tasks", spec, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (2, line + "\n"), result.stderr
    result = tune("eval", tiny_model, "--tasks", missing_data)
    assert result.returncode == 2 and result.stderr.startswith(
        f"task tune_general_knowledge: a data file it names is missing (Unable to find '{tmp_path / 'nowhere.jsonl'}')") and len(result.stderr.splitlines()) == 1
    result = tune("eval", tiny_model, "--tasks", KNOWLEDGE, "--compare-base")
    assert (result.returncode, result.stderr) == (2, f"--compare-base: {tiny_model} is not a run dir with an adapter; "
                                                     "score its base on its own with `tune eval BASE --tasks ...`\n")
    result = tune("eval", tiny_model)
    assert (result.returncode, result.stderr) == (2, "tune eval needs --data FILE, --tasks TASKS, or both\n")


@pytest.mark.slow
def test_unknown_and_unreachable_hub_tasks_are_one_line(tiny_model):
    """Both need lm-eval's index of its built-in tasks (tens of seconds); CI is offline, as users often are."""
    result = tune("eval", tiny_model, "--tasks", "hellaswagg")
    assert result.returncode == 2
    assert result.stderr.startswith("--tasks: lm-eval has no task 'hellaswagg'; did you mean hellaswag")
    offline = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = tune("eval", tiny_model, "--tasks", "hellaswag", "--limit", "2", env=offline)
    assert result.returncode == 2 and result.stderr == (
        "task hellaswag: its data cannot be loaded (Couldn't reach 'Rowan/hellaswag' on the Hub "
        "(OfflineModeIsEnabled)); offline, only data already in the datasets cache or a local task YAML can be "
        "scored\n")
