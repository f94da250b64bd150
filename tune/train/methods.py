"""`train.method` -> the function that runs it. Each takes (recipe, recipe_path, echo, resume, console,
allow_data_change) and returns a RunResult; adding a method is a module on tune/train/run.py's skeleton
and one line here."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from tune.output import exclusive
from tune.train import classify, distributed, dpo, grpo, kto, orpo, reward, sft

METHODS = {"sft": sft.train, "dpo": dpo.train, "classify": classify.train, "grpo": grpo.train,
           "reward": reward.train, "kto": kto.train, "orpo": orpo.train}


def run_recipe(recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
               allow_data_change: bool = False):
    """What `tune run` calls: the recipe's method, with the output dir locked for the whole run (by rank 0,
    which alone writes it), so a second run into the same dir is refused instead of mixing with this one."""
    lock = exclusive(Path(recipe.output.dir)) if distributed.is_main() else nullcontext()
    with lock:
        return METHODS[recipe.train.method](recipe, recipe_path, echo=echo, resume=resume, console=console,
                                            allow_data_change=allow_data_change)
