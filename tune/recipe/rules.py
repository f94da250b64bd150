"""What each `train.method` accepts, as one table, checked when a recipe is validated: `tune validate`
refuses a combination the trainer could not run, instead of the run refusing it minutes later.

A method's module (tune/train/<method>.py) can rely on these rules; it does not re-check them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accepts:
    formats: tuple[str, ...]  # data.format values the method trains on
    packing: bool = False  # data.packing: several examples per row
    probes: tuple[str, ...] = ()  # formats whose rows are chats the model can answer: data.probes, data.replay
    continues_adapter: bool = False  # model.adapter: continue a trained adapter instead of a fresh one


METHODS = {
    "sft": Accepts(formats=("instruction", "chat", "completion"), packing=True, probes=("instruction", "chat")),
    "dpo": Accepts(formats=("preference",), continues_adapter=True),
    "classify": Accepts(formats=("classification",)),
}
PLANNED = ("orpo", "kto")  # named in the schema so a recipe that asks for them gets a clear answer


def method_problem(recipe) -> str | None:
    """The first rule the recipe breaks, as `key: problem` (the key is what to change), or None."""
    method, data = recipe.train.method, recipe.data
    if method in PLANNED:
        return (f"train.method: {method} is not available yet; preference alignment runs with dpo "
                "(train.loss_type picks IPO, hinge, robust and the other DPO-family losses)")
    accepts = METHODS[method]
    if data.format not in accepts.formats:
        if len(accepts.formats) == 1:
            return f"train.method: {method} needs data.format: {accepts.formats[0]}, not {data.format}"
        owners = [name for name, other in METHODS.items() if data.format in other.formats]
        return f"data.format: {data.format} rows are for train.method: {' or '.join(owners)}, not {method}"
    if data.packing and not accepts.packing:
        return f"data.packing: train.method: {method} takes one example per row; set data.packing: false"
    if (data.replay or data.probes) and data.format not in accepts.probes:
        key = "data.replay" if data.replay else "data.probes"
        return f"{key}: needs train.method: sft on instruction or chat data, not {method} on {data.format} data"
    if recipe.model.adapter is not None and not accepts.continues_adapter:
        able = [name for name, other in METHODS.items() if other.continues_adapter]
        return (f"model.adapter: continuing a trained adapter is supported for train.method: "
                f"{' or '.join(able)}, not {method}")
    return None
