"""`train.method: kto`: Kahneman-Tversky optimization through TRL's KTOTrainer, from unpaired rows (one reply
and whether it is desirable), with LoRA, DoRA, rsLoRA or QLoRA. The reference is the base with the adapter
off. Rows arrive tokenized as SFT and the preference methods tokenize (tune/data/unpaired.py), fitted to
data.max_length by data.overlength: TRL would render them again with its own boundary, drop rows whose
prompt reaches max_length and cut the rest, losing their end token, without a count.

What is KTO's own: the desirable and undesirable rows are weighted so that both kinds pull equally (the
paper's advice when one kind outnumbers the other), and the run says which weights it chose."""

from __future__ import annotations

from pathlib import Path

from tune.data.unpaired import prepare_unpaired
from tune.models.load import load_model, lora_config
from tune.recipe import Recipe
from tune.train import lm_head
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.run import RunResult

METRICS = ("rewards/chosen", "rewards/rejected", "kl", "logps/chosen", "logps/rejected",
           "eval_rewards/chosen", "eval_rewards/rejected", "eval_kl")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    run = skeleton.start(recipe, recipe_path, echo, resume, console, METRICS, allow_data_change)
    import transformers
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    # ---- tokenizer, template and rows
    tokenizer, template_label, data = skeleton.prepare_data(run, prepare_unpaired, _described)
    weights = _weights(data.train)

    # ---- model and trainer; of TRL's data preparation only its KL rows are left to make
    class PretokenizedKTOTrainer(KTOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset

            def turned(batch):  # as TRL builds them: each batch's completions turned by one against its prompts
                return {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}
            return dataset.map(turned, batched=True, batch_size=args.per_device_train_batch_size)

    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded)
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    config = KTOConfig(**arguments(run, model.dtype, evaluate_during), beta=recipe.train.beta,
                       max_length=recipe.data.max_length,  # cuts only the KL rows: a prompt with another's reply
                       desirable_weight=weights[0], undesirable_weight=weights[1])
    trainer = PretokenizedKTOTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=lora_config(recipe.adapter, model),
        train_dataset=Dataset.from_list(data.train), eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer)
    run.echo(lm_head.install(trainer, run.on_gpu, run.sharded))
    skeleton.model_line(run, model.dtype, parameters, f"{recipe.adapter.method} r={recipe.adapter.r} (reference: the "
                        "base, adapter off)", f"kto beta {config.beta}, weights desirable {weights[0]:.3g}, "
                        f"undesirable {weights[1]:.3g} (both kinds pull equally)")

    # ---- train and save
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(data.eval))
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
    summary = skeleton.summary(run, trainer, trained, parameters, _tokens(data.train),
                               template=template_label, beta=recipe.train.beta, desirable_weight=weights[0],
                               undesirable_weight=weights[1], eval_reward_margin=margin)
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)


def _weights(rows: list[dict]) -> tuple[float, float]:
    """(desirable, undesirable) weights that give both kinds equal total pull: TRL (and the KTO paper) want the
    weighted ratio within [1, 4/3]."""
    desirable = sum(row["label"] for row in rows)
    undesirable = len(rows) - desirable
    return (undesirable / desirable, 1.0) if desirable < undesirable else (1.0, desirable / undesirable)


def _tokens(rows: list[dict]) -> int:
    return sum(len(row["prompt_ids"]) + len(row["completion_ids"]) for row in rows)


def _described(data, template: str) -> str:
    desirable = sum(row["label"] for row in data.train)
    return (f"{len(data.train)} train ({desirable} desirable, {len(data.train) - desirable} undesirable) / "
            f"{len(data.eval)} eval rows, {_tokens(data.train)} tokens per epoch, template {template}")
