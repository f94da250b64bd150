"""The recipe: its schema (sections 1:1 with the YAML), what each method accepts, and loading a file
plus `--set` overrides into a validated `Recipe`. The layer every other one stands on."""

from tune.recipe.load import apply_overrides, dump, load, read_yaml
from tune.recipe.schema import (DPO_LOSSES, FORMAT_FIELDS, AdapterSection, DataSection, DistributedSection,
                                ModelSection, OutputSection, Recipe, TrainSection, WeightedSource)

__all__ = ["apply_overrides", "dump", "load", "read_yaml", "DPO_LOSSES", "FORMAT_FIELDS", "AdapterSection",
           "DataSection", "DistributedSection", "ModelSection", "OutputSection", "Recipe", "TrainSection",
           "WeightedSource"]
