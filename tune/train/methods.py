"""`train.method` -> the function that runs it. Each takes (recipe, recipe_path, echo, resume, console)
and returns a RunResult; adding a method is a module on tune/train/run.py's skeleton and one line here."""

from tune.train import classify, dpo, sft

METHODS = {"sft": sft.train, "dpo": dpo.train, "classify": classify.train}
