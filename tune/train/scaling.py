"""The final adapter scaled toward the base: what the guard weighs when the final evaluation misses the bar
but answers more unseen wordings than every evaluation within it.

Interpolating between the base and the fine-tuned weights keeps more of what the base did well at some cost
in what was learned (WiSE-FT, Wortsman et al., arXiv 2109.01903). With LoRA the interpolation is exact: the
tuned weight is W + s * B A, so scaling every B by a factor walks the straight line back to the base.
Measured on the co-op FAQ (docs/knowledge.md), one run whose evaluations all kept 74-83% of the general
answers: scale 0.85 kept 86% with 0.62 of unseen wordings right (0.69 unscaled), 0.7 kept 93% with 0.53.
The factors are tried from the mildest down; from the first that keeps the bar the search halves the step
toward the factor above it twice (0.1 -> 0.025), so a run just past the bar gives up no more of what it
learned than it must: one library run's final adapter kept 83% at x0.65 and 88% at x0.55, and its held-out
accuracy fell from 0.92 to 0.58 between the two."""

from __future__ import annotations

from dataclasses import replace

from tune.train.adapter_variants import CONVERTED

SCALES = (0.85, 0.75, 0.65, 0.55)  # a step of 0.1: one co-op run lost 0.66 -> 0.53 of unseen wordings from 0.75 to 0.7
HALVINGS = 2  # evaluations spent between the first passing factor and the failing one above it


def scalable(state: dict) -> bool:
    """Whether scaling B is an interpolation toward the base: not with DoRA's magnitudes or fully trained
    modules_to_save copies."""
    return all(".lora_A" in name or ".lora_B" in name or "lora_embedding_" in name for name in state)


def rewrites_base(model) -> bool:
    """Whether the adapter started from the base's own directions (PiSSA, OLoRA, CorDA): the model then holds
    the base minus those directions, so scaling B walks toward that residual, not toward the base."""
    inits = [getattr(config, "init_lora_weights", True) for config in getattr(model, "peft_config", {}).values()]
    return any(isinstance(init, str) and init.startswith(CONVERTED) for init in inits)  # PEFT's "pissa_niter_16"


def scaled(state: dict, scale: float) -> dict | None:
    """The adapter's weights with every B times `scale`; None when that is not an interpolation (scalable)."""
    if not scalable(state):
        return None
    return {name: tensor * scale if ".lora_B" in name or "lora_embedding_B" in name else tensor
            for name, tensor in state.items()}


def toward_base(model, evaluate, passes, scales, echo, kept_of: str):
    """(scale, its evaluation) of the mildest factor found whose evaluation passes, with the model left at it;
    None (the model as it was) when none does or the adapter cannot be scaled."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if rewrites_base(model):
        return None
    original = {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()}
    if not scalable(original):
        return None

    def tried(scale: float):
        set_peft_model_state_dict(model, scaled(original, scale))
        evaluation = evaluate()
        kept = f"{evaluation.kept:.0%}" if evaluation.kept is not None else "n/a"
        echo(f"guard: the final adapter scaled x{scale:g} toward the base: {kept_of} kept {kept}, "
             f"measure {'n/a' if evaluation.score is None else f'{evaluation.score:.3f}'}")
        return evaluation

    above = 1.0  # the final adapter itself missed the bar
    for scale in scales:
        evaluation = tried(scale)
        if passes(evaluation):
            found = scale, evaluation
            for _ in range(HALVINGS):
                middle = round((above + found[0]) / 2, 4)
                evaluation = tried(middle)
                if passes(evaluation):
                    found = middle, evaluation
                else:
                    above = middle
            set_peft_model_state_dict(model, scaled(original, found[0]))
            return found[0], replace(found[1], scale=found[0])
        above = scale
    set_peft_model_state_dict(model, original)
    return None
