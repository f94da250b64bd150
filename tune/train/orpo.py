"""`train.method: orpo`: odds-ratio preference optimization through TRL's ORPOTrainer (which TRL 1.x keeps
under trl.experimental.orpo), with LoRA, DoRA, rsLoRA or QLoRA. ORPO needs no reference model and no SFT
stage first: its loss is the SFT loss on the chosen reply plus beta times a log-odds-ratio penalty that
pushes the rejected reply down.

The pairs are DPO's and the reward model's (tune/data/preference.py): the same tokens as SFT, fitted to
data.max_length by data.overlength, handed to TRL in its own columns. TRL would render them again with its
own prompt/reply boundary, cut long replies without a count, and keep a pair whose prompt fills max_length
with empty replies."""

from __future__ import annotations

from pathlib import Path

from tune.data.preference import prepare_pairs, sequence_tokens
from tune.models.load import load_model, lora_config
from tune.recipe import Recipe
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.run import RunResult

METRICS = ("rewards/accuracies", "rewards/margins", "nll_loss", "log_odds_ratio", "eval_rewards/accuracies",
           "eval_rewards/margins", "eval_nll_loss", "eval_log_odds_ratio")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    run = skeleton.start(recipe, recipe_path, echo, resume, console, METRICS, allow_data_change)
    import transformers
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class PretokenizedORPOTrainer(ORPOTrainer):
        def tokenize_row(self, feature, model=None):  # the rows hold ORPO's columns already
            return feature

    # ---- tokenizer, template and pairs
    tokenizer, template_label, data = skeleton.prepare_data(run, prepare_pairs, lambda data, template: (
        f"{len(data.train)} train / {len(data.eval)} eval pairs, {sequence_tokens(data.train)} tokens per epoch, "
        f"template {template}"))

    # ---- model and trainer: no reference model at all
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded)
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    config = ORPOConfig(**arguments(run, model.dtype, evaluate_during), beta=recipe.train.beta,
                        max_length=recipe.data.max_length, remove_unused_columns=False)
    trainer = PretokenizedORPOTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=lora_config(recipe.adapter, model),
        train_dataset=Dataset.from_list(_orpo_rows(data.train)),
        eval_dataset=Dataset.from_list(_orpo_rows(data.eval)) if data.eval else None, callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer, pair_accuracy="rewards/accuracies")
    skeleton.model_line(run, model.dtype, parameters, f"{recipe.adapter.method} r={recipe.adapter.r} (no reference "
                        "model)", f"orpo beta {config.beta}")

    # ---- train and save
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(data.eval))
    staging = skeleton.save(run, trainer, tokenizer)
    if staging is None:
        return RunResult({}, trainer.model)
    held_out = [r for r in run.metrics.records if isinstance(r.get("eval_rewards/accuracies"), float)]
    accuracy = held_out[-1]["eval_rewards/accuracies"] if held_out else None
    if accuracy is not None:
        run.echo(f"held-out pairs: the chosen reply is more likely in {accuracy:.0%} (margin "
                 f"{held_out[-1]['eval_rewards/margins']:+.4f})")
    summary = skeleton.summary(run, trainer, trained, parameters, sequence_tokens(data.train),
                               template=template_label, beta=recipe.train.beta, eval_reward_accuracy=accuracy)
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)


def _orpo_rows(pairs: list[dict]) -> list[dict]:
    """TRL's ORPO columns: each side whole (prompt + reply), its prompt masked in the labels."""
    rows = []
    for pair in pairs:
        prompt, row = pair["prompt_ids"], {}
        for side in ("chosen", "rejected"):
            reply = pair[f"{side}_ids"]
            row |= {f"{side}_input_ids": prompt + reply, f"{side}_attention_mask": [1] * (len(prompt) + len(reply)),
                    f"{side}_labels": [-100] * len(prompt) + reply}
        rows.append(row)
    return rows
