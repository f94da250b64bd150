"""`train.method: reward`: a reward model from preference pairs through TRL's RewardTrainer. The base becomes
a sequence classifier with one output (the score); LoRA adapts the body and the new head is trained fully.
The loss is -log sigmoid(score(prompt + chosen) - score(prompt + rejected)); the number that matters is the
held-out pairwise accuracy: how often the chosen reply scores higher.

Pairs are tokenized exactly as for DPO and SFT (same chat template, same prompt/reply boundary), so the
model scores text the way `tune predict` and a GRPO run's `reward.model` will present it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tune.data.preference import prepare_pairs, sequence_tokens
from tune.models.classifier import LABELS_FILE, load_base
from tune.models.load import lora_config
from tune.output import write_json
from tune.recipe import Recipe
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.run import RunResult

METRICS = ("accuracy", "margin", "mean_reward", "eval_accuracy", "eval_margin", "eval_mean_reward")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    run = skeleton.start(recipe, recipe_path, echo, resume, console, metric_keys=METRICS,
                         allow_data_change=allow_data_change)
    import transformers
    from datasets import Dataset
    from peft import get_peft_model
    from trl import RewardConfig, RewardTrainer

    # ---- pairs as whole sequences: prompt + chosen, prompt + rejected
    tokenizer, template_label, data = skeleton.prepare_data(run, prepare_pairs, lambda data, template: (
        f"{len(data.train)} train / {len(data.eval)} eval pairs, {sequence_tokens(data.train)} tokens per epoch, "
        f"template {template}"))
    train_rows, eval_rows = _sequences(data.train), _sequences(data.eval)

    # ---- a one-output classifier: LoRA on the body, the head (and anything the checkpoint lacked) trained fully
    transformers.set_seed(recipe.train.seed)
    base, new_modules = load_base(recipe.model, run.source, ["reward"], tokenizer, recipe.train.gradient_checkpointing)
    saved = sorted(set(recipe.adapter.modules_to_save) | set(new_modules)) or None
    model = get_peft_model(base, dataclasses.replace(lora_config(recipe.adapter, base), task_type="SEQ_CLS", modules_to_save=saved))
    evaluate_during = bool(eval_rows) and recipe.train.eval_steps is not None
    config = RewardConfig(**arguments(run, base.dtype, evaluate_during), max_length=None,  # fitted already
                          center_rewards_coefficient=None, remove_unused_columns=False)
    trainer = RewardTrainer(
        model=model, args=config, processing_class=tokenizer, train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer, pair_accuracy="accuracy")
    skeleton.model_line(run, base.dtype, parameters,
                        f"as a reward model (one score), {recipe.adapter.method} r={recipe.adapter.r} + head")

    # ---- train; the last eval describes the final weights
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(eval_rows))
    staging = skeleton.save(run, trainer, tokenizer)
    if staging is None:
        return RunResult({}, model)
    model.get_base_model().config.save_pretrained(staging)  # num_labels 1, pad_token_id
    write_json(staging / LABELS_FILE, {"labels": ["reward"], "id2label": {0: "reward"}, "label2id": {"reward": 0},
                                       "class_weights": None, "reward_model": True})
    held_out = [r for r in run.metrics.records if isinstance(r.get("eval_accuracy"), float)]
    logged = [r for r in run.metrics.records if isinstance(r.get("accuracy"), float)]
    accuracy = held_out[-1]["eval_accuracy"] if held_out else None
    if accuracy is not None:
        run.echo(f"held-out pairs: the chosen reply scores higher in {accuracy:.0%} "
                 f"(margin {held_out[-1].get('eval_margin', float('nan')):.3f})")
    summary = skeleton.summary(run, trainer, trained, parameters, sequence_tokens(data.train), template=template_label,
                               eval_pairwise_accuracy=accuracy,
                               eval_margin=held_out[-1].get("eval_margin") if held_out else None,
                               train_pairwise_accuracy=logged[-1]["accuracy"] if logged else None)
    skeleton.finish(run, staging, summary)
    return RunResult(summary, model)


def _sequences(pairs: list[dict]) -> list[dict]:
    return [{"chosen_ids": p["prompt_ids"] + p["chosen_ids"], "rejected_ids": p["prompt_ids"] + p["rejected_ids"]}
            for p in pairs]
