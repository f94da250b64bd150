"""Reward methods on the real model, offline: the bundled GRPO recipe raises SmolLM2-135M-Instruct's held-out
reward while its general answers stay within the guard's bar, and the reward-model recipe ranks held-out
pairs. Shortened runs of the README's demos (the full numbers are measured by the commands in the README).
Slow (minutes on 2 cores); CI runs them."""

import json

import pytest

from tests.conftest import REPO
from tune import recipe as recipe_io

pytestmark = pytest.mark.slow


def first_rows(source, target, count):  # a smaller copy of a bundled file
    lines = source.read_text().splitlines()[:count]
    target.write_text("".join(line + "\n" for line in lines))
    return target


def test_grpo_recipe_raises_the_held_out_reward_and_keeps_general_answers(smollm2_folder, tmp_path):
    from tune.train.grpo import train

    # Half the recipe's 40 steps, and 24 of the 44 general probes. The first steps trade right answers for
    # brevity (measured: 12 steps scored below the base), so the check is on the guard's kept evaluation of
    # 10 and 20 steps; the full run's numbers are the README's.
    general = first_rows(REPO / "data_templates" / "smollm2-domain" / "probes-general.jsonl",
                         tmp_path / "probes-general.jsonl", 24)
    path = REPO / "recipes" / "smollm2-grpo.yaml"
    recipe = recipe_io.load(path, [f"output.dir={tmp_path / 'out'}", "train.max_steps=20", "train.eval_steps=10",
                                   f"data.probes=[{general}]"])
    summary = train(recipe, path, echo=print).summary
    print(json.dumps({k: summary[k] for k in ("eval_reward_base", "eval_reward_tuned", "train_seconds", "kept")}))
    # Direction, not size: on 24 prompts whose rewards spread by about 0.4 one standard error is about 0.08, and
    # the 20 steps gained 0.05 or more on one CPU and 0.022 on another (0.763 -> 0.785, an AMD EPYC with
    # AVX512-BF16, whose bfloat16 sums differ); the full run's gain is the README's.
    assert summary["eval_reward_tuned"] > summary["eval_reward_base"]
    assert summary["probes"]["probes-general"]["kept"] >= 0.75
    assert summary["first_reward"] < summary["last_reward"]


def test_reward_model_recipe_ranks_held_out_pairs(smollm2_folder, tmp_path):
    from tune.train.reward import train

    path = REPO / "recipes" / "smollm2-reward.yaml"
    summary = train(recipe_io.load(path, [f"output.dir={tmp_path / 'out'}"]), path, echo=print).summary
    assert summary["eval_pairwise_accuracy"] >= 0.80
