"""What `tune validate` reports and `tune run` checks before it loads anything, in one list for both: the
model name, the data files and their first rows, the distributed section, the adapter against the base's
layers (from its files alone), and a label column that gives nearly every row its own label. Run used to
skip the last two: a missing target module ended in PEFT's traceback, and r=512 on 256-wide layers or
20,000 labels of one row each trained without a word."""

from __future__ import annotations

from pathlib import Path

from tune.train import benchmarks


def findings(recipe, recipe_dir: Path | None) -> tuple[list[str], list[str]]:
    """(problems, warnings): a problem stops the command, a warning is printed and the run goes on."""
    from tune.data.classification import label_warnings
    from tune.data.prepare import check
    from tune.models.layers import adapter_findings
    from tune.models.resolve import model_problems
    from tune.train.distributed import check as distributed_check

    problems = model_problems(recipe.model) + check(recipe.data, recipe_dir)
    problems += distributed_check(recipe, recipe_dir)  # e.g. a DeepSpeed config file
    problems += benchmarks.problems(recipe, recipe_dir)  # lm-eval installed, task files there
    layer_problems, warnings = adapter_findings(recipe)  # the base's config and weight names, not its weights
    problems += layer_problems
    if recipe.reward is not None and recipe.reward.model and not problems:  # prompts the reward model would cut
        from tune.infer.reward_model import length_findings
        from tune.paths import find_file

        # a reward run not trained yet (a bundled recipe names the one it is trained after) is the run's to refuse
        if (find_file(recipe.reward.model, recipe_dir) or Path(recipe.reward.model)).is_dir():

            reward_problems, reward_warnings = length_findings(recipe, recipe_dir)
            problems, warnings = problems + reward_problems, warnings + reward_warnings
    if recipe.data.format == "classification" and not problems:
        warnings += label_warnings(recipe.data, recipe_dir)
    return problems, warnings
