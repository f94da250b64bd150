"""Trainers: one module per `train.method`, each exposing `train(recipe, recipe_path, echo) -> RunResult`."""

from tune.train import sft

TRAINERS = {"sft": sft.train}
