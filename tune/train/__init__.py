"""Trainers: one module per `train.method`, each exposing `train(recipe, recipe_path, echo) -> RunResult`."""

from tune.train import classify, dpo, sft

TRAINERS = {"sft": sft.train, "dpo": dpo.train, "classify": classify.train}
