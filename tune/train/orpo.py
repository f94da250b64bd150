"""`train.method: orpo`: odds-ratio preference optimization through TRL's ORPOTrainer (which TRL 1.x keeps
under trl.experimental.orpo), with LoRA, DoRA, rsLoRA or QLoRA. ORPO needs no reference model and no SFT
stage first: its loss is the SFT loss on the chosen reply plus beta times a log-odds-ratio penalty that
pushes the rejected reply down. Pairs arrive as chat messages; TRL renders them with the run's template."""

from __future__ import annotations

from pathlib import Path

from tune.data.preference import prepare_conversations
from tune.data.conversation import rendered_tokens
from tune.data.rows import sha256
from tune.data.templates import resolve_template
from tune.models.load import load_model, load_tokenizer, lora_config
from tune.recipe import Recipe
from tune.train import distributed
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.run import RunResult

METRICS = ("rewards/accuracies", "rewards/margins", "nll_loss", "log_odds_ratio", "eval_rewards/accuracies",
           "eval_rewards/margins", "eval_nll_loss", "eval_log_odds_ratio")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    run = skeleton.start(recipe, recipe_path, echo, resume, console, metric_keys=METRICS,
                         allow_data_change=allow_data_change)
    import transformers
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    # ---- tokenizer, template and pairs
    tokenizer = load_tokenizer(recipe.model, run.source)
    template, template_label = resolve_template(recipe.data.template, tokenizer, run.recipe_dir)
    tokenizer.chat_template = template  # TRL renders the pairs with it
    train_rows, eval_rows, fingerprint = prepare_conversations(recipe.data, run.recipe_dir, recipe.train.seed)
    fingerprint["template_sha256"] = sha256(template.encode())
    tokens = rendered_tokens(tokenizer, [row["prompt"] + row[side] for row in train_rows for side in ("chosen", "rejected")])
    dropped = f"; {fingerprint['dropped_pairs']} bad pairs dropped" if fingerprint["dropped_pairs"] else ""
    run.echo(f"data: {len(train_rows)} train / {len(eval_rows)} eval pairs, {tokens} tokens per epoch, template {template_label}{dropped}")
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=fingerprint)

    # ---- model and trainer: no reference model at all
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded)
    evaluate_during = bool(eval_rows) and recipe.train.eval_steps is not None
    config = ORPOConfig(**arguments(run, model.dtype, evaluate_during), beta=recipe.train.beta,
                        max_length=recipe.data.max_length, remove_unused_columns=False)
    trainer = ORPOTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=lora_config(recipe.adapter),
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer, pair_accuracy="rewards/accuracies")
    run.echo(f"model: {run.source} ({model.dtype}, quantization {recipe.model.quantization}), {recipe.adapter.method} "
             f"r={recipe.adapter.r} (no reference model): {parameters[0]:,} trainable of {parameters[1]:,} parameters; "
             f"orpo beta {config.beta}")

    # ---- train and save
    skeleton.write_records(run, fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(eval_rows))
    staging = skeleton.save(run, trainer, tokenizer)
    if staging is None:
        return RunResult({}, trainer.model)
    held_out = [r for r in run.metrics.records if isinstance(r.get("eval_rewards/accuracies"), float)]
    accuracy = held_out[-1]["eval_rewards/accuracies"] if held_out else None
    if accuracy is not None:
        run.echo(f"held-out pairs: the chosen reply is more likely in {accuracy:.0%} (margin "
                 f"{held_out[-1]['eval_rewards/margins']:+.4f})")
    summary = skeleton.summary(run, trainer, trained, parameters, tokens,
                               template=template_label, beta=recipe.train.beta, eval_reward_accuracy=accuracy)
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)
