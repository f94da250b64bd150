"""GRPO on the tiny model: the reward rises on a learnable reward, equal rewards in every group warn, the
guard keeps the best adapter under the probe bar and stops early, and every broken reward is one line
naming the file, the function and the prompt row, with nothing written."""

import json
from collections import Counter

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, ctrl_c_at, write_recipe
from tune import recipe as recipe_io
from tune.errors import TuneError
from tune.train.grpo import train as grpo_train

PROMPTS = REPO / "data_templates" / "prompts.jsonl"
REWARDS = '''
def low_ids(prompts, completions, completion_ids, **kwargs):
    # the share of completion tokens among the tokenizer's first 256 ids (the byte alphabet)
    return [sum(i < 256 for i in ids) / len(ids) for ids in completion_ids]

def constant(prompts, completions, **kwargs):
    return [1.0] * len(completions)

def sees(prompts, completions, answer):
    assert isinstance(prompts[0], str) and isinstance(completions[0], str), (type(prompts[0]), type(completions[0]))
    return [0.0] * len(completions)

def raises(prompts, completions, **kwargs):
    return [1.0 / 0 for _ in completions]

def too_few(prompts, completions, **kwargs):
    return [1.0]

def words(prompts, completions, **kwargs):
    return ["good" for _ in completions]

def by_keyword(completions, answer, **kwargs):
    # TRL's documented shape: keywords only, no prompts; numpy and bool values are numbers too
    import numpy
    assert kwargs["trainer_state"] is not None and isinstance(answer[0], str)
    return [numpy.float32(len(c) < 40) for c in completions]

def exactly(completions, answer):
    return [c.strip() == a for c, a in zip(completions, answer)]

def first_only(completions, **kwargs):
    return [1.0] + [None] * (len(completions) - 1)

def step_of(completions, trainer_state, **kwargs):
    return [float(trainer_state.global_step)] * len(completions)

def seen(prompts, completions, trainer_state, **kwargs):
    import json, pathlib
    with open(pathlib.Path(__file__).with_name("seen.jsonl"), "a") as log:
        log.writelines(json.dumps(p if isinstance(p, str) else p[-1]["content"]) + "\\n" for p in prompts)
    return [0.0] * len(completions)

def falling(completions, trainer_state, **kwargs):
    return [-float(trainer_state.global_step)] * len(completions)
'''


def grpo_recipe(tmp_path, functions, **sections):
    (tmp_path / "rewards.py").write_text(REWARDS)
    sections["data"] = {"train": str(PROMPTS), "format": "prompt"} | sections.get("data", {})
    sections["train"] = {"method": "grpo", "max_steps": 4, "batch_size": 8, "lr_scheduler": "constant",
                         "warmup_ratio": 0} | sections.get("train", {})
    sections["reward"] = {"functions": functions}
    sections["grpo"] = {"num_generations": 4, "max_completion_length": 12} | sections.get("grpo", {})
    return write_recipe(tmp_path / "r.yaml", **sections)


def lines_of(path, **kwargs):
    lines = []
    result = grpo_train(recipe_io.load(path), path, echo=lines.append, **kwargs)
    return result, lines


def test_reward_rises_and_a_saturated_reward_warns_that_groups_train_nothing(tiny_model, tmp_path):
    # The tiny model's output layer is too small to concentrate probability through LoRA alone, so it is
    # trained fully here; the built-in max_tokens is 1.0 for every 12-token completion (a constant column).
    path = grpo_recipe(tmp_path, ["rewards.py:low_ids", {"function": "max_tokens", "limit": 12}],
                       adapter={"modules_to_save": ["lm_head"]},
                       train={"max_steps": 16, "learning_rate": 0.06})
    result, lines = lines_of(path)
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "reward" in r]
    assert [r["step"] for r in logged] == list(range(1, 17))
    first, last = logged[0]["rewards/low_ids/mean"], logged[-1]["rewards/low_ids/mean"]
    assert first < 0.5 and last > 0.9, (first, last)
    assert all(r["rewards/max_tokens/mean"] == 1.0 for r in logged)
    assert result.summary["first_reward"] == logged[0]["reward"] and result.summary["last_reward"] == logged[-1]["reward"]
    assert any(line.startswith("warning: ") and "of the groups got the same reward for every completion" in line
               for line in lines)
    assert [line for line in lines if line.startswith("step     1/16")][0].count("reward ") == 1  # reward on the step line
    record = result.summary["rewards"][0]
    assert record["function"] == "rewards.py:low_ids" and len(record["sha256"]) == 64
    assert lines[0].startswith(f"reward: running Python code from {tmp_path / 'rewards.py'} (sha256 ")


@pytest.mark.parametrize("scale_rewards, unit", [("group", "groups"), ("batch", "sampled batches")])
def test_a_constant_reward_warns_and_the_adapter_is_saved(scale_rewards, unit, tiny_model, tmp_path):
    # TRL's frac_reward_zero_std is the share of groups with one reward, but under scale_rewards: batch it is
    # 1 or 0 for each whole generation batch: the warning names what was measured
    path = grpo_recipe(tmp_path, ["rewards.py:constant"], grpo={"scale_rewards": scale_rewards})
    result, lines = lines_of(path)
    assert result.summary["mean_zero_spread_share"] == 1.0
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == [f"warning: 100%-100% of the {unit} got the same reward for every completion over the last 3 "
                        f"logs; such {unit} train nothing. Make the reward finer-grained (partial credit), raise "
                        "grpo.temperature or grpo.num_generations, or use prompts the model sometimes gets right"]
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)


def test_held_out_prompts_and_probes_are_answered_before_and_after(tiny_model, tmp_path):
    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(json.dumps({"question": f"Say {w}.", "expected": w}) + "\n" for w in ("a", "e", "the")))
    path = grpo_recipe(tmp_path, ["exact_answer", {"function": "max_words", "limit": 3}, "rewards.py:step_of"],
                       data={"eval_fraction": 0.25, "probes": [str(probes)], "probe_max_new_tokens": 6},
                       train={"eval_steps": 2})
    result, lines = lines_of(path)
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the rewards get the trainer's own state: a step's samples are scored at the step before it, and the
    # guard's evaluation after step 2 at step 2, as the next samples are; the base before training at 0
    assert [r["rewards/step_of/mean"] for r in records if "reward" in r] == [0.0, 1.0, 2.0, 3.0]
    assert [r["eval_rewards/step_of"] for r in records if "eval_reward" in r] == [2.0, 4.0]
    table = json.loads((out / "rewards.json").read_text())
    # 6 held-out prompts: the guard chooses by 3, the table reports the other 3 (test below)
    assert len(table["rows"]) == 3 and table["base"] == result.summary["eval_reward_base"]
    assert {"prompt", "base", "tuned", "base_reward", "tuned_reward"} <= set(table["rows"][0])
    assert (out / "rewards.md").read_text().startswith("# Held-out prompts")
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval_reward" in line]
    assert [r["step"] for r in evals] == [2, 4] and {"eval_rewards/exact_answer", "eval_rewards/max_words"} <= set(evals[0])
    assert result.summary["probes"]["probes"]["questions"] == 3
    assert any(line.startswith("held-out prompts: mean reward ") for line in lines)
    assert any(line.startswith("guard: kept ") for line in lines)


def test_the_reported_prompts_never_reach_the_guards_choice(tiny_model, tmp_path):
    path = grpo_recipe(tmp_path, ["rewards.py:seen"], data={"eval_fraction": 0.25}, train={"eval_steps": 2})
    result, lines = lines_of(path)
    reported = [row["prompt"] for row in json.loads((tmp_path / "out" / "rewards.json").read_text())["rows"]]
    scored = Counter(json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines())
    held_out = {prompt: n for prompt, n in scored.items() if n in (2, 3)}  # training prompts: once per completion
    # the base, the guard at steps 2 and 4 score the guard's prompts; only the base and the kept adapter the report's
    assert sorted(held_out.values()) == [2, 2, 2, 3, 3, 3] and {p for p, n in held_out.items() if n == 2} == set(reported)
    assert result.summary["report_prompts"] == 3 and result.summary["guard_reward_base"] == 0.0
    assert any(line.startswith("held-out prompts: the 3 above were never chosen by; on the 3 the guard chose by: ")
               for line in lines)


def scored(tmp_path, tokenizer, functions, answers):
    """The guard's held-out scoring of scripted (text, finished) answers, with the recipe's reward file."""
    from transformers import TrainerState

    from tune.train import rewards
    from tune.train.guard import evaluator

    section = recipe_io.load(grpo_recipe(tmp_path, functions)).reward
    funcs, _, weights = rewards.build_all(section, tmp_path, lambda line: None)
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} plus 2?"}], "answer": "4"} for i in range(len(answers))]
    evaluate = evaluator(funcs, weights, rows, [], None, tokenizer, 12)
    return evaluate(lambda conversations, limit: answers, TrainerState(global_step=3))


def test_held_out_scoring_leaves_out_answers_every_reward_skipped(tiny_tokenizer, tmp_path):
    # TRL makes such a completion's reward NaN and leaves it out of the mean; scored 0, it made this 0.333
    evaluation = scored(tmp_path, tiny_tokenizer, ["rewards.py:first_only"], [("4", True)] * 3)
    assert (evaluation.step, evaluation.rewards, evaluation.score) == (3, [1.0, None, None], 1.0)
    assert evaluation.per_function == {"first_only": 1.0}


def test_held_out_token_counts_include_the_end_token_as_in_training(tiny_tokenizer, tmp_path):
    # TRL's completion_ids of a finished completion end with the end token: "four" (2 tokens) counts 3
    assert tiny_tokenizer("four", add_special_tokens=False)["input_ids"] == [72, 391]
    evaluation = scored(tmp_path, tiny_tokenizer, [{"function": "max_tokens", "limit": 2}],
                        [("four", True), ("four", False)])
    assert evaluation.rewards == [0.5, 1.0] and evaluation.score == 0.75


def test_the_guard_keeps_the_best_adapter_within_the_probe_bar_and_stops_early(tiny_model):
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, TrainerControl, TrainerState

    from tune.models.load import lora_config
    from tune.recipe import AdapterSection
    from tune.train.guard import Evaluation, Guard

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(AdapterSection(r=4)))
    script = {1: (0.2, 1.0), 2: (0.5, 0.8), 3: (0.9, 0.5), 4: (1.0, 0.25), 5: (1.0, 1.0)}  # step: (reward, kept)
    added, lines = [], []
    metrics = type("Metrics", (), {"add": lambda self, record, max_steps: added.append(record)})()
    guard = Guard(lambda m, step: Evaluation(step, script[step][0], {}, script[step][1]), every=1,
                        min_kept_share=0.75, stop_after=2, metrics=metrics, echo=lines.append)
    state, control, weights = TrainerState(max_steps=5), TrainerControl(), {}
    for step in range(1, 5):
        with torch.no_grad():  # the weights at each step, told apart by value
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.fill_(step)
        weights[step] = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
        state.global_step = step
        guard.on_step_end(None, state, control, model=model)
        assert control.should_training_stop == (step == 4)
    assert [r["probes_kept"] for r in added] == [1.0, 0.8, 0.5, 0.25]
    assert lines == ["guard: stopping at step 4: the probes kept 25% (under grpo.min_kept_share 75%) at 2 "
                     "evaluations in a row"]
    said, kept = guard.restore_best(model)
    assert kept.step == 2 and said == ("kept step 2: held-out reward 0.500, the highest among evaluations whose probes kept at least 75% "
                    "(final step 4: reward 1.000, probes kept 25%); the next higher, step 3, reached 0.900 but kept "
                    "50% of the probes")
    restored = get_peft_model_state_dict(model)
    assert all(torch.equal(restored[k], weights[2][k]) for k in restored)


def test_a_text_prompt_reaches_a_reward_file_as_text(tiny_model, tmp_path):
    path = grpo_recipe(tmp_path, ["rewards.py:sees"], train={"max_steps": 1})
    result, _ = lines_of(path)  # the function asserts what it receives; a failure would be a TuneError here
    assert result.summary["steps"] == 1


@pytest.mark.parametrize("function, expected", [
    ("missing.py:f", "reward.functions: missing.py: no such file (looked beside the recipe and in the current folder)"),
    ("rewards.py:absent", "reward.functions: {dir}/rewards.py has no function absent (functions in it: by_keyword, "
                          "constant, exactly, falling, first_only, low_ids, raises, seen, sees, step_of, too_few, words)"),
    ("rewards.py:raises", "reward {dir}/rewards.py:raises: raised ZeroDivisionError: float division by zero (on {data}:row 1)"),
    ("rewards.py:too_few", "reward {dir}/rewards.py:too_few: returned 1 rewards for 2 completions; return one per "
                           "completion (on {data}:row 1)"),
    ("rewards.py:words", "reward {dir}/rewards.py:words: returned 'good', not a finite number (or None to skip); "
                         "on {data}:row 1"),
    ({"function": "exact_answer", "column": "solution"},
     "reward exact_answer: the prompt rows have no column 'solution' (columns: answer); set column: in its "
     "reward.functions entry"),
])
def test_a_broken_reward_is_one_line_before_anything_is_written(function, expected, tiny_model, tmp_path):
    path = grpo_recipe(tmp_path, [function])
    with pytest.raises(TuneError) as caught:
        lines_of(path)
    assert caught.value.problems == [expected.format(dir=tmp_path, data=PROMPTS)]
    assert not (tmp_path / "out").exists()


def validate(path):
    from typer.testing import CliRunner

    from tune.cli import app

    result = CliRunner().invoke(app, ["validate", str(path)])
    assert "Traceback" not in result.output + result.stderr
    return result


@pytest.mark.parametrize("change, expected", [
    ({"grpo": {"num_generations": 1}}, "grpo.num_generations: Input should be greater than or equal to 2"),
    ({"grpo": {"num_generations": 3}}, "grpo.num_generations: a generation batch of 8 completions (train.batch_size 8 "
                                       "x gradient_accumulation 1) does not hold whole groups of 3; make it a multiple "
                                       "of 3, or set grpo.generation_batch_size"),
    ({"grpo": {"generation_batch_size": 12}}, "grpo.generation_batch_size: 12 completions do not split into training "
                                              "batches of 8 (train.batch_size); use a multiple of 8"),
    ({"grpo": {"loss_type": "drgrpo"}}, "grpo.loss_type: 'drgrpo' is not a GRPO loss; did you mean 'dr_grpo'? (one of "
                                        "grpo, dr_grpo, dapo, bnpo, cispo, sapo, luspo, vespo)"),
    ({"reward": {"functions": ["exact_answr"]}}, "reward.functions: 'exact_answr' is not a built-in reward; did you "
     "mean 'exact_answer'? (built-ins: exact_answer, final_number, contains_answer, regex, max_words, max_tokens, json_valid; or give "
     "FILE.py:NAME)"),
    ({"reward": {"functions": ["regex"]}}, "reward.functions: regex needs `pattern`"),
    ({"reward": {"functions": [{"function": "regex", "pattern": "(unclosed"}]}},
     "reward.functions: pattern '(unclosed' is not a regular expression: missing ), unterminated subpattern at position 0"),
    ({"distributed": {"strategy": "fsdp"}}, "distributed.strategy: grpo samples and runs its guard with whole weights "
                                            "on every process; use ddp, not fsdp"),
    ({"reward": {"functions": ["exact_answer"], "weights": [1, 2]}}, "reward.weights: 2 weights for 1 rewards; give "
                                                                     "one per reward (functions first, then the model)"),
    ({"reward": None}, "reward: train.method: grpo needs a reward section (reward.functions and/or reward.model)"),
    ({"grpo": {"rollback": 0.5, "stop_after": 1}}, "grpo.rollback: with stop_after: 1 the first evaluation under the bar "
                                                   "stops the run before any rollback; use stop_after: 2 (or none)"),
    ({"train": {"method": "sft"}, "data": {"format": "instruction"}, "reward": None, "grpo": {"beta": 0.1}},
     "grpo.num_generations: applies to train.method: grpo, not sft"),
])
def test_validate_refuses_what_trl_would_refuse_mid_run(change, expected, tmp_path):
    import yaml

    path = grpo_recipe(tmp_path, ["exact_answer"])
    recipe = yaml.safe_load(path.read_text())
    for section, values in change.items():
        if values is None:
            recipe.pop(section)
        elif section in ("reward", "distributed"):
            recipe[section] = values
        else:
            recipe[section].update(values)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = validate(path)
    assert result.exit_code == 2 and expected in result.stderr, result.stderr


def test_a_prompt_row_without_its_prompt_column_is_one_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "2+2?", "answer": "4"}\n')
    path = grpo_recipe(tmp_path, ["exact_answer"], data={"train": str(rows)})
    result = validate(path)
    assert result.exit_code == 2
    assert result.stderr == (f"{path}: {rows}:row 1: missing column prompt; row has ['answer', 'question'] (map yours with "
                             "data.columns.prompt)\n")


def test_reward_functions_are_called_by_keyword_as_trl_documents_them(tiny_model, tmp_path):
    path = grpo_recipe(tmp_path, ["rewards.py:by_keyword", "rewards.py:exactly"], train={"max_steps": 2},
                       data={"eval_fraction": 0.25})
    result, _ = lines_of(path)
    assert result.summary["steps"] == 2 and result.summary["eval_reward_base"] is not None


def test_training_and_held_out_scoring_see_the_rows_own_values(tmp_path):
    from tune.recipe.rewards import RewardFunction
    from tune.train import rewards

    rows = [{"prompt": [{"role": "user", "content": "q"}], "answer": 7, rewards.WHERE: "f:row 1"},
            {"prompt": [{"role": "user", "content": "q"}], "answer": 7.5, rewards.WHERE: "f:row 2"}]
    reward, _ = rewards.build(RewardFunction(function="exact_answer"), None, print)
    rewards.bind_rows([reward], rows)
    completions = [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "7.5"}]]
    # as TRL calls it in training: only the row numbers travel through the dataset (no 7 -> 7.0)
    assert reward([r["prompt"] for r in rows], completions, None, **{rewards.ROW: [0, 1]}) == [1.0, 1.0]


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "2+2?", "completion": "4"}, "column completion has a name the reward call uses itself; rename it "
                                            "in the file (e.g. to answer or reference)"),
])
def test_a_column_trl_reserves_is_one_line(row, expected):
    from tune.data.prompts import row_to_prompt
    from tune.errors import DataError

    with pytest.raises(DataError) as caught:
        row_to_prompt(row, {}, None, "f.jsonl:row 2")
    assert caught.value.problems == [f"f.jsonl:row 2: {expected}"]


@pytest.mark.parametrize("overlength", ["truncate", "drop", "error"])
def test_a_prompt_over_max_length_follows_data_overlength(overlength, tiny_model, tmp_path, monkeypatch):
    # data.max_length bounds a prompt as TRL renders it for sampling (and is vLLM's context with the completion):
    # a 71-token prompt cannot be cut without changing the question, so truncate drops it as drop does
    from tune.train import run as skeleton

    long = "Ana has 3 apples. " * 6 + "How many?"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in
                            ["What is 2 plus 2?", long, "What is 3 plus 5?", "What is 9 plus 1?"]))
    path = grpo_recipe(tmp_path, ["rewards.py:constant"], data={"train": str(rows), "max_length": 40,
                                                               "overlength": overlength})
    if overlength == "error":
        with pytest.raises(TuneError) as caught:
            lines_of(path)
        assert caught.value.problems == [f"{rows}:row 2: 71 tokens, over data.max_length=40 (raise max_length, or set "
                                         "data.overlength: truncate or drop)"]
        assert not (tmp_path / "out").exists()
        return
    built, lines = [], []
    monkeypatch.setattr(skeleton, "fit", lambda run, trainer, **kwargs: built.append(trainer) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # stopped where training would start
        grpo_train(recipe_io.load(path), path, echo=lines.append)
    assert "data: 0 prompts truncated and 1 dropped (over data.max_length=40; longest 71 tokens)" in lines
    trainer = built[0]
    prompts = [row["prompt"] for row in trainer.train_dataset]
    assert [p[0]["content"] for p in prompts] == ["What is 2 plus 2?", "What is 3 plus 5?", "What is 9 plus 1?"]
    assert [len(ids) for ids in trainer._tokenize_prompts(prompts)[0]] == [14, 14, 14]  # as TRL renders them
    assert len(trainer._tokenize_prompts([[{"role": "user", "content": long}]])[0][0]) == 71


def scripted_guard(script, lines, stop_after=None):
    from tune.train.guard import Evaluation, Guard

    metrics = type("Metrics", (), {"add": lambda self, record, max_steps: None})()
    return Guard(lambda m, step: Evaluation(step, script[step][0], {"r": script[step][0]}, script[step][1],
                                            answers=[f"answer at {step}"]),
                 every=1, min_kept_share=0.75, stop_after=stop_after, metrics=metrics, echo=lines.append)


def test_the_guard_state_round_trips_through_a_checkpoint(tiny_model, tmp_path):
    # Evaluations 1-2 before the checkpoint, 3 after a resume: the resumed guard keeps step 1 (saved in the
    # checkpoint, weights included) and stops at step 3, the second evaluation in a row under the bar, as an
    # uninterrupted guard does.
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, TrainerControl, TrainerState

    from tune.models.load import lora_config
    from tune.recipe import AdapterSection
    from tune.train.guard import BEST_FILE, STATE_FILE

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(AdapterSection(r=4)))
    script = {1: (0.6, 1.0), 2: (0.9, 0.5), 3: (0.95, 0.25)}
    args = type("Args", (), {"output_dir": str(tmp_path)})()
    lines, state = [], TrainerState(max_steps=5)
    guard = scripted_guard(script, lines, stop_after=2)

    def step(guard, number):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.fill_(number)
        state.global_step = number
        control = TrainerControl()
        guard.on_step_end(None, state, control, model=model)
        return control.should_training_stop

    assert not step(guard, 1) and not step(guard, 2)
    (tmp_path / "checkpoint-2").mkdir()
    guard.on_save(args, state, TrainerControl())
    assert sorted(p.name for p in (tmp_path / "checkpoint-2").iterdir()) == sorted([STATE_FILE, BEST_FILE])

    resumed = scripted_guard(script, lines, stop_after=2)
    resumed.resume(tmp_path / "checkpoint-2")
    assert [e.step for e in resumed.history] == [1, 2] and resumed.below == 1 and resumed.best.answers == ["answer at 1"]
    assert step(resumed, 3)
    said, kept = resumed.restore_best(model)
    assert kept.step == 1 and said.startswith("kept step 1: held-out reward 0.600")
    assert all(torch.equal(tensor, torch.ones_like(tensor)) for name, tensor in get_peft_model_state_dict(model).items()
               if "lora_B" in name)


def test_a_run_interrupted_after_an_evaluation_resumes_to_the_same_kept_adapter(tiny_model, tmp_path, monkeypatch):
    # The held-out reward falls with every step, so the first evaluation (step 2) is the best: a resumed run
    # that chose only among evaluations after the resume would keep step 6 instead.
    import torch
    from trl import GRPOTrainer

    from tune.errors import Interrupted

    sections = dict(data={"eval_fraction": 0.25}, train={"max_steps": 6, "eval_steps": 2, "save_steps": 2})
    for name in ("straight", "killed"):
        (tmp_path / name).mkdir()
    result, _ = lines_of(grpo_recipe(tmp_path / "straight", ["rewards.py:falling"], **sections))
    assert result.summary["kept"].startswith("kept step 2: held-out reward -2.000")

    path = grpo_recipe(tmp_path / "killed", ["rewards.py:falling"], **sections)
    restore = ctrl_c_at(monkeypatch, GRPOTrainer, 5)
    with pytest.raises(Interrupted):
        lines_of(path)
    restore()
    resumed, lines = lines_of(path, resume=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-4")
    assert resumed.summary["kept"] == result.summary["kept"]
    first, again = (load_file(tmp_path / folder / "out" / "adapter_model.safetensors") for folder in ("straight", "killed"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_a_rollback_returns_to_the_best_adapter_with_a_smaller_step_and_evaluates_more_often(tiny_model):
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, TrainerControl, TrainerState, get_linear_schedule_with_warmup

    from tune.models.load import lora_config
    from tune.recipe import AdapterSection
    from tune.train.guard import Evaluation, Guard

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(AdapterSection(r=4)))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 100)
    # step: (reward, kept). 4 falls under the bar: back to 2, evaluating every step; 5 passes and is the best;
    # 6 falls: back to 5; 7 falls too, the second in a row: stop
    script = {2: (0.5, 1.0), 4: (0.9, 0.5), 5: (0.6, 0.9), 6: (0.95, 0.4), 7: (0.97, 0.3)}
    lines, evaluated = [], []
    metrics = type("Metrics", (), {"add": lambda self, record, max_steps: None})()
    guard = Guard(lambda m, step: evaluated.append(step) or Evaluation(step, script[step][0], {}, script[step][1]),
                  every=2, min_kept_share=0.75, stop_after=2, metrics=metrics, echo=lines.append, rollback=0.5)
    state = TrainerState(max_steps=100)

    def lora_b():
        return {t.flatten()[0].item() for n, t in get_peft_model_state_dict(model).items() if "lora_B" in n}

    for step in range(1, 8):
        optimizer.zero_grad()
        sum((p * p).sum() for p in trained).backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():  # the weights at each step, told apart by value
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.fill_(step)
        state.global_step = step
        control = TrainerControl()
        guard.on_step_end(None, state, control, model=model, optimizer=optimizer, lr_scheduler=scheduler)
        if step == 4:  # the weights of step 2, half the step size from here on, the optimizer's moments cleared
            assert lora_b() == {2.0} and optimizer.state == {} and scheduler.base_lrs == [5e-4]
            assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 * 96 / 100)
        assert control.should_training_stop == (step == 7)
    assert evaluated == [2, 4, 5, 6, 7] and guard.rollbacks == [4, 6] and scheduler.base_lrs == [2.5e-4]
    assert lines[0] == ("guard: step 4: the probes kept 50% (under 75%); back to the adapter of step 2, learning rate "
                        "x0.5 (9.60e-04 -> 4.80e-04), evaluating every step")
    said, kept = guard.restore_best(model)
    assert kept.step == 5 and lora_b() == {5.0}


def test_a_rollback_in_a_real_run_halves_the_learning_rate_it_logs(tiny_model, tmp_path, monkeypatch):
    from tune.train import guard

    shares = iter([1.0, 0.5, 0.9, 0.9, 0.9, 0.9])  # the probes' kept share at steps 2, 4 (under 0.75), 5, 6, 7, 8
    monkeypatch.setattr(guard.probes, "kept_share", lambda *args: next(shares))
    probe_file = tmp_path / "probes.jsonl"
    probe_file.write_text(json.dumps({"question": "Say a.", "expected": "a"}) + "\n")
    path = grpo_recipe(tmp_path, ["rewards.py:step_of"], data={"eval_fraction": 0.25, "probes": [str(probe_file)]},
                       train={"max_steps": 8, "eval_steps": 2, "learning_rate": 1e-3}, grpo={"rollback": 0.5})
    result, lines = lines_of(path)
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_reward" in r] == [2, 4, 5, 6, 7, 8]
    rates = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    assert rates[4] == pytest.approx(1e-3) and rates[5] == pytest.approx(5e-4) and rates[8] == pytest.approx(5e-4)
    assert result.summary["rollbacks"] == [4]
    assert any(line.startswith("guard: step 4: the probes kept 50% (under 75%); back to the adapter of step 2") for line in lines)


def test_the_replay_term_trains_the_base_answers_beside_a_reward_that_trains_nothing(tiny_model, tmp_path, monkeypatch):
    # A constant reward gives every completion the same advantage: GRPO alone leaves the adapter at its start
    # (lora_B zero). With grpo.replay the base model's answers are trained beside it, and their loss falls.
    from tune.data.replay import Replay
    from tune.train import sampling

    def replay_rows(answer, tokenizer, template, data, train, recipe_dir, seed, report, wanted, limit):
        texts = ["The capital of France is Paris.", "Water boils at 100 degrees."] * 4
        ids = [tokenizer(text)["input_ids"] for text in texts]
        return Replay([{"prompt": "q", "answer": t} for t in texts], [{"input_ids": i, "labels": i} for i in ids], "replay: 8", {})

    monkeypatch.setattr(sampling, "make_replay", replay_rows)
    lora_b = {}
    for weight in (0.0, 1.0):
        folder = tmp_path / str(weight)
        folder.mkdir()
        path = grpo_recipe(folder, ["rewards.py:constant"], train={"max_steps": 6, "learning_rate": 1e-2},
                           grpo={"replay": weight})
        lines_of(path)
        saved = load_file(folder / "out" / "adapter_model.safetensors")
        lora_b[weight] = max(t.abs().max().item() for n, t in saved.items() if "lora_B" in n)
        records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
        replay_losses = [r["replay_loss"] for r in records if "replay_loss" in r]
        assert (len(replay_losses) == 6 and replay_losses[-1] < replay_losses[0]) if weight else not replay_losses
        assert (folder / "out" / "replay.jsonl").exists() == bool(weight)
    assert lora_b[0.0] == 0.0 and lora_b[1.0] > 0.0


def test_a_continued_adapter_is_its_own_kl_reference(tiny_model, tmp_path):
    # TRL 1.16 copies a continued adapter into a frozen "ref" adapter: the first step's KL is 0 (policy and
    # reference are the same weights), where the base as reference would give the adapter's whole drift.
    first = tmp_path / "first"
    first.mkdir()
    path = grpo_recipe(first, ["rewards.py:low_ids"], train={"max_steps": 4, "learning_rate": 5e-2})
    lines_of(path)
    moved = load_file(first / "out" / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for n, t in moved.items() if "lora_B" in n)

    again = tmp_path / "again"
    again.mkdir()
    path = grpo_recipe(again, ["rewards.py:low_ids"], model={"adapter": str(first / "out")},
                       train={"max_steps": 2}, grpo={"beta": 0.1})
    result, lines = lines_of(path)
    records = [json.loads(line) for line in (again / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl"] for r in records if "kl" in r][0] == pytest.approx(0.0, abs=1e-6)
    assert any("beta 0.1 (reference: a frozen copy of the adapter continued)" in line for line in lines)
    assert not (again / "out" / "ref").exists() and (again / "out" / "adapter_model.safetensors").exists()
