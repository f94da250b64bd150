"""What each `train.method` accepts, as one table, checked when a recipe is validated: `tune validate`
refuses a combination the trainer could not run, instead of the run refusing it minutes later.

A method's module (tune/train/<method>.py) can rely on these rules; it does not re-check them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accepts:
    formats: tuple[str, ...]  # data.format values the method trains on
    packing: bool = False  # data.packing: several examples per row
    probes: tuple[str, ...] = ()  # formats whose rows are chats the model can answer: data.probes
    replay: bool = False  # data.replay: base-model answers mixed into the training rows
    augment: tuple[str, ...] = ()  # formats whose question/answer rows data.augment rewrites
    continues_adapter: bool = False  # model.adapter: continue a trained adapter instead of a fresh one


METHODS = {
    "sft": Accepts(formats=("instruction", "chat", "completion"), packing=True, probes=("instruction", "chat"),
                   replay=True, augment=("instruction", "chat")),
    "dpo": Accepts(formats=("preference",), continues_adapter=True),
    "orpo": Accepts(formats=("preference",)),
    "kto": Accepts(formats=("unpaired",)),
    "reward": Accepts(formats=("preference",)),
    "classify": Accepts(formats=("classification",)),
    "grpo": Accepts(formats=("prompt",), probes=("prompt",), continues_adapter=True),
}


def method_problem(recipe) -> str | None:
    """The first rule the recipe breaks, as `key: problem` (the key is what to change), or None."""
    method, data = recipe.train.method, recipe.data
    accepts = METHODS[method]
    if data.format not in accepts.formats:
        if len(accepts.formats) == 1:
            return f"train.method: {method} needs data.format: {accepts.formats[0]}, not {data.format}"
        owners = [name for name, other in METHODS.items() if data.format in other.formats]
        return f"data.format: {data.format} rows are for train.method: {' or '.join(owners)}, not {method}"
    if data.packing and not accepts.packing:
        return f"data.packing: train.method: {method} takes one example per row; set data.packing: false"
    if data.replay and not accepts.replay:
        return f"data.replay: needs train.method: sft on instruction or chat data, not {method}"
    if data.replay and data.replay_loss == "distribution" and data.packing:
        return ("data.replay_loss: distribution marks the replay rows token by token, which TRL's packing drops; "
                "set data.packing: false or data.replay_loss: tokens")
    if data.probes and data.format not in accepts.probes:
        return (f"data.probes: needs train.method: sft on instruction or chat data, or grpo, not {method} on "
                f"{data.format} data")
    if data.augment is not None and data.format not in accepts.augment:
        return (f"data.augment: rewrites question-and-answer rows (train.method: sft on instruction or chat data), "
                f"not {method} on {data.format} data; remove data.augment")
    if data.augment is not None and data.augment.rows and data.augment.model:
        return ("data.augment: rows are trained as they stand and model would write none; remove model (or rows, "
                "to generate again)")
    if recipe.train.epochs == "auto" and method != "sft":
        return f"train.epochs: auto sizes SFT by the rows each fact has; give train.method: {method} a number"
    if recipe.train.keep == "best":
        problem = _keep_best_problem(recipe)
        if problem:
            return problem
    if recipe.model.adapter is not None and not accepts.continues_adapter:
        able = [name for name, other in METHODS.items() if other.continues_adapter]
        return (f"model.adapter: continuing a trained adapter is supported for train.method: "
                f"{' or '.join(able)}, not {method}")
    if recipe.train.kept_by == "tasks" and not recipe.train.eval_tasks:
        return "train.kept_by: tasks counts the base's right eval_tasks items still right; name train.eval_tasks"
    if recipe.train.kept_by == "tasks" and not (recipe.train.keep == "best" or method == "grpo"):
        return "train.kept_by: tasks is what the guard keeps by; it needs train.keep: best (sft) or train.method: grpo"
    if recipe.train.eval_tasks and method in ("classify", "reward"):
        return (f"train.eval_tasks: lm-eval tasks score a model that writes text; train.method: {method} trains a "
                "classifier head; remove train.eval_tasks")
    return _adapter_problem(recipe) or _section_problem(recipe)


REWRITES_BASE = ("pissa", "olora", "corda")  # inits that move the base's own directions into the adapter


def _adapter_problem(recipe) -> str | None:
    """The adapter variants' combinations that PEFT or tune cannot run, as one line each."""
    adapter, method, strategy = recipe.adapter, recipe.train.method, recipe.distributed.strategy
    init = adapter.init
    if init in REWRITES_BASE and recipe.model.quantization != "none":
        return (f"adapter.init: {init} rewrites the base weights it starts from, which a {recipe.model.quantization} "
                "base cannot hold; set model.quantization: none, or adapter.init: default for QLoRA")
    if init in REWRITES_BASE and adapter.method == "dora":
        return (f"adapter.init: {init} is saved as a plain LoRA (PEFT's conversion), which DoRA's magnitudes are "
                "not; use adapter.method: lora or rslora")
    if init in REWRITES_BASE and (method in ("dpo", "kto") or (method == "grpo" and recipe.grpo.beta > 0)):
        return (f"adapter.init: {init} moves the base's top directions into the adapter, so the model with the adapter "
                f"switched off ({method}'s reference) is no longer the base; use adapter.init: default for {method}")
    if init in REWRITES_BASE and recipe.data.replay and recipe.data.replay_loss == "distribution":
        return (f"adapter.init: {init} moves the base's top directions into the adapter, so the model with the adapter "
                "switched off (data.replay_loss: distribution's teacher) is no longer the base; set data.replay_loss: tokens")
    if init == "eva" and method != "sft":
        return f"adapter.init: eva starts from the training rows' activations (train.method: sft); use pissa or olora for {method}"
    if init == "corda" and method != "sft":
        return (f"adapter.init: corda is calibrated on the activations of rows SFT prepares (train.method: sft); use "
                f"pissa or olora for {method}")
    if init == "orthogonal" and (adapter.r % 2 or any(rank % 2 for rank in adapter.rank_pattern.values())):
        return "adapter.init: orthogonal pairs the rank's directions; use an even adapter.r (and even rank_pattern ranks)"
    if init != "default" and recipe.model.adapter is not None:
        return "adapter.init: sets up a new adapter; model.adapter continues a trained one, so remove adapter.init"
    if init in (*REWRITES_BASE, "eva") and strategy != "ddp":
        return f"adapter.init: {init} is computed on whole weights and not verified under {strategy}; use ddp or adapter.init: default"
    if adapter.lora_plus_ratio and strategy != "ddp":
        return (f"adapter.lora_plus_ratio: builds its own optimizer groups, which {strategy} replaces with its own; "
                "use ddp or leave it out")
    if recipe.train.neftune_alpha is not None and method != "sft":
        return f"train.neftune_alpha: NEFTune adds noise to instruction tuning's embeddings (train.method: sft), not {method}"
    return None


def _keep_best_problem(recipe) -> str | None:
    if recipe.train.method != "sft":
        instead = "; GRPO's guard is grpo.keep" if recipe.train.method == "grpo" else ""
        return f"train.keep: best applies to train.method: sft, not {recipe.train.method}{instead}"
    if recipe.train.eval_steps is None:
        return "train.keep: best compares evaluations made every train.eval_steps; set train.eval_steps"
    augment = recipe.data.augment
    if not recipe.data.probes and not (augment and (augment.rows or augment.rewordings and augment.heldout)):
        return ("train.keep: best needs something to compare: data.probes, or data.augment with held-out "
                "rewordings (augment.heldout > 0)")
    return None


def _section_problem(recipe) -> str | None:
    """Sections only one method reads: changed for another, they are a mistake worth naming. (Defaults pass,
    so a resolved recipe.yaml, which writes every key out, loads as it is.)"""
    method = recipe.train.method
    if method == "grpo" and recipe.reward is None:
        return "reward: train.method: grpo needs a reward section (reward.functions and/or reward.model)"
    if method != "grpo" and recipe.reward is not None:
        return f"reward: only train.method: grpo optimizes rewards, not {method}"
    if method != "grpo":
        changed = [name for name, field in type(recipe.grpo).model_fields.items()
                   if getattr(recipe.grpo, name) != field.default]
        if changed:
            return f"grpo.{changed[0]}: applies to train.method: grpo, not {method}"
    if method != "dpo" and recipe.train.loss_type != "sigmoid":
        instead = "; the GRPO loss is grpo.loss_type" if method == "grpo" else ""
        return f"train.loss_type: picks the DPO loss and applies to train.method: dpo only{instead}"
    if method == "grpo":
        problem = generation_batch_problem(recipe.train, recipe.grpo)
        if problem:
            return problem
    if method == "grpo" and recipe.distributed.strategy != "ddp":
        return (f"distributed.strategy: grpo samples and runs its guard with whole weights on every process; use "
                f"ddp, not {recipe.distributed.strategy}")
    if method == "grpo" and recipe.grpo.rollback and recipe.grpo.stop_after == 1:
        return ("grpo.rollback: with stop_after: 1 the first evaluation under the bar stops the run before any "
                "rollback; use stop_after: 2 (or none)")
    if method == "kto" and recipe.train.batch_size < 2:
        return "train.batch_size: kto estimates its KL term from other rows of the batch; use at least 2"
    return None


def generation_batch_problem(train, grpo, processes: int = 1) -> str | None:
    """What TRL's GRPOConfig would refuse at launch: completions are generated in batches that hold whole
    groups, and training consumes them batch_size at a time. (train.batch_size counts completions.)"""
    per_step = train.batch_size * processes
    if grpo.generation_batch_size is None:
        batch = per_step * train.gradient_accumulation
        if batch % grpo.num_generations:
            return (f"grpo.num_generations: a generation batch of {batch} completions (train.batch_size "
                    f"{train.batch_size} x gradient_accumulation {train.gradient_accumulation}"
                    f"{f' x {processes} processes' if processes > 1 else ''}) does not hold whole groups of "
                    f"{grpo.num_generations}; make it a multiple of {grpo.num_generations}, or set "
                    "grpo.generation_batch_size")
    elif grpo.generation_batch_size % per_step:
        return (f"grpo.generation_batch_size: {grpo.generation_batch_size} completions do not split into training "
                f"batches of {per_step} (train.batch_size{' x processes' if processes > 1 else ''}); use a multiple "
                f"of {per_step}")
    return None
