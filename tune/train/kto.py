"""`train.method: kto`: Kahneman-Tversky optimization through TRL's KTOTrainer, from unpaired rows (one reply
and whether it is desirable), with LoRA, DoRA, rsLoRA or QLoRA. The reference is the base with the adapter
off. Rows arrive as chat messages and TRL renders them with the run's chat template.

What is KTO's own: the desirable and undesirable rows are weighted so that both kinds pull equally (the
paper's advice when one kind outnumbers the other), and the run says which weights it chose."""

from __future__ import annotations

from pathlib import Path

from tune.data.conversation import rendered_tokens
from tune.data.rows import sha256
from tune.data.templates import resolve_template
from tune.data.unpaired import prepare_unpaired
from tune.models.load import load_model, load_tokenizer, lora_config
from tune.recipe import Recipe
from tune.train import distributed, lm_head
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.run import RunResult

METRICS = ("rewards/chosen", "rewards/rejected", "kl", "logps/chosen", "logps/rejected",
           "eval_rewards/chosen", "eval_rewards/rejected", "eval_kl")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    run = skeleton.start(recipe, recipe_path, echo, resume, console, metric_keys=METRICS,
                         allow_data_change=allow_data_change)
    import transformers
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    # ---- tokenizer, template and rows
    tokenizer = load_tokenizer(recipe.model, run.source)
    template, template_label = resolve_template(recipe.data.template, tokenizer, run.recipe_dir)
    tokenizer.chat_template = template  # TRL renders the rows with it
    train_rows, eval_rows, fingerprint = prepare_unpaired(recipe.data, run.recipe_dir, recipe.train.seed)
    fingerprint["template_sha256"] = sha256(template.encode())
    tokens = rendered_tokens(tokenizer, [row["prompt"] + row["completion"] for row in train_rows])
    desirable = sum(row["label"] for row in train_rows)
    undesirable = len(train_rows) - desirable
    # equal total pull from both kinds: TRL (and the KTO paper) want the weighted ratio within [1, 4/3]
    weights = (undesirable / desirable, 1.0) if desirable < undesirable else (1.0, desirable / undesirable)
    run.echo(f"data: {len(train_rows)} train ({desirable} desirable, {undesirable} undesirable) / {len(eval_rows)} "
             f"eval rows, {tokens} tokens per epoch, template {template_label}; weights desirable {weights[0]:.3g}, undesirable {weights[1]:.3g}")
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=fingerprint)

    # ---- model and trainer
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded)
    evaluate_during = bool(eval_rows) and recipe.train.eval_steps is not None
    config = KTOConfig(**arguments(run, model.dtype, evaluate_during), beta=recipe.train.beta,
                       max_length=recipe.data.max_length, desirable_weight=weights[0], undesirable_weight=weights[1])
    trainer = KTOTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=lora_config(recipe.adapter),
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer)
    run.echo(lm_head.install(trainer, run.on_gpu, run.sharded))
    run.echo(f"model: {run.source} ({model.dtype}, quantization {recipe.model.quantization}), {recipe.adapter.method} "
             f"r={recipe.adapter.r} (reference: the base, adapter off): {parameters[0]:,} trainable of "
             f"{parameters[1]:,} parameters; kto beta {config.beta}")

    # ---- train and save
    skeleton.write_records(run, fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(eval_rows))
    staging = skeleton.save(run, trainer, tokenizer)
    if staging is None:
        return RunResult({}, trainer.model)
    # both kinds must be in the held-out rows for a margin (TRL logs a kind only when the batch had it)
    held_out = [r for r in run.metrics.records if isinstance(r.get("eval_rewards/chosen"), float)
                and isinstance(r.get("eval_rewards/rejected"), float)]
    margin = held_out[-1]["eval_rewards/chosen"] - held_out[-1]["eval_rewards/rejected"] if held_out else None
    if margin is not None:
        run.echo(f"held-out rows: reward of desirable minus undesirable replies {margin:+.4f} (beta x log-ratio to "
                 "the base)")
    summary = skeleton.summary(run, trainer, trained, parameters, tokens,
                               template=template_label, beta=recipe.train.beta, desirable_weight=weights[0],
                               undesirable_weight=weights[1], eval_reward_margin=margin)
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)
