"""Preference alignment: DPO and its sibling losses (IPO, hinge, robust, ...) through TRL's DPOTrainer,
with LoRA, DoRA, rsLoRA or QLoRA, optionally continuing an SFT run's adapter (`model.adapter`). The pairs
arrive pre-tokenized by tune/data/preference.py with the SFT tokenization, so TRL only pads, batches and
computes the preference loss.

The reference model is never a second copy of the base:
- fresh adapter: TRL gets `peft_config` and computes reference log-probs with the adapter switched off,
  i.e. the base model;
- `model.adapter`: the SFT adapter is loaded trainable and TRL adds a frozen copy of it ("ref"), so the
  reference is exactly the SFT model. (Merging it into the base and training a fresh adapter would re-round
  a 4-bit base, and leave an adapter on a base that `tune merge`/`export` could not rebuild.)"""

from __future__ import annotations

from pathlib import Path

from tune.data.preference import prepare_pairs
from tune.models.load import load_model, lora_config
from tune.models.run_dir import check_fits_base
from tune.recipe import Recipe
from tune.train import lm_head
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.run import RunResult

# How often the policy prefers chosen over rejected, and by how much (beta x log-ratio vs the reference),
# and the held-out log-probs from which the tuned model's margin follows.
METRICS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
           "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_rewards/rejected",
           "eval_logps/chosen", "eval_logps/rejected")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    # model.adapter resolved first: the resume check compares the recipe as it will be recorded
    start = skeleton.starting_adapter(recipe, Path(recipe_path).resolve().parent) if recipe.model.adapter else None
    run = skeleton.start(recipe, recipe_path, echo, resume, console, metric_keys=METRICS,
                         allow_data_change=allow_data_change)
    if start is not None:
        check_fits_base(start, recipe.model.name, run.source)
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        # TRL would re-render prompt and replies itself; the pairs already hold exactly the tokens SFT
        # trains on (same template, same prompt/reply boundary), so its dataset preparation is skipped.
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _set_signature_columns_if_needed(self):  # keep "length" for the length-grouped sampler
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, "length"]

    # ---- tokenizer, template and pairs: every data problem surfaces before anything is written
    tokenizer, template_label, data = skeleton.prepare_data(run, prepare_pairs, lambda data, template: (
        f"{len(data.train)} train / {len(data.eval)} eval pairs, {_reply_tokens(data.train)} reply tokens per epoch, "
        f"template {template}"))

    # ---- model, reference and trainer
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded)
    dtype = model.dtype
    if start is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(start), is_trainable=True)  # TRL adds the frozen "ref" copy
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    config = DPOConfig(
        **arguments(run, dtype, evaluate_during),
        beta=recipe.train.beta,
        loss_type=[recipe.train.loss_type] if isinstance(recipe.train.loss_type, str) else recipe.train.loss_type,
        max_length=None,  # the pairs were already fitted to data.max_length (data.overlength)
        # A batch's sequences are padded to its longest; pairs of similar length waste less (TRL 1.16 has
        # switched DPO's padding_free off).
        train_sampling_strategy="group_by_length" if recipe.data.group_by_length else "random",
    )
    rows = [{**pair, "length": len(pair["prompt_ids"]) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))}
            for pair in data.train]
    trainer = PretokenizedDPOTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=None if start else lora_config(recipe.adapter, model),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer, pair_accuracy="rewards/accuracies")
    run.echo(lm_head.install(trainer, run.on_gpu, run.sharded))
    adapter_line = (f"continuing the adapter of {start} (reference: that SFT model)" if start else
                    f"{recipe.adapter.method} r={recipe.adapter.r} (reference: the base, adapter off)")
    skeleton.model_line(run, dtype, parameters, adapter_line, f"dpo loss {config.loss_type}, beta {config.beta}")

    # ---- train; save only the trained adapter, never TRL's "ref" copy
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(data.eval), out_of_memory_hint=(
        "; DPO runs chosen and rejected together, so a batch holds twice the sequences"))
    staging = skeleton.save(run, trainer, tokenizer, selected_adapters=["default"])
    if staging is None:
        return RunResult({}, trainer.model)
    summary = skeleton.summary(run, trainer, trained, parameters, _reply_tokens(data.train),  # what the loss compares
                               template=template_label, **_preference_metrics(run.metrics.records, recipe, start))
    if summary["reward_accuracy"] is not None:
        run.echo(f"rewards: accuracy {summary['reward_accuracy']:.2f}, margin {summary['reward_margin']:.4f} "
                 "(last logged training step)")
    if summary["eval_margin_tuned"] is not None:
        run.echo(f"held-out pairs: log p(chosen) - log p(rejected) {summary['eval_margin_reference']:+.2f} (reference) "
                 f"-> {summary['eval_margin_tuned']:+.2f} (tuned), reward accuracy {summary['eval_reward_accuracy']:.2f}")
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)


def _reply_tokens(pairs: list[dict]) -> int:
    return sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)


def _preference_metrics(records: list[dict], recipe: Recipe, start: Path | None) -> dict:
    rewarded = [r for r in records if isinstance(r.get("rewards/accuracies"), float)]
    held_out = [r for r in records if isinstance(r.get("eval_rewards/accuracies"), float)]
    return {
        "loss_type": recipe.train.loss_type, "beta": recipe.train.beta,
        "started_from_adapter": str(start) if start else None,
        "reward_accuracy": rewarded[-1]["rewards/accuracies"] if rewarded else None,
        "reward_margin": rewarded[-1]["rewards/margins"] if rewarded else None,
        "eval_reward_accuracy": held_out[-1]["eval_rewards/accuracies"] if held_out else None,
        **_held_out_margins(held_out[-1] if held_out else None, recipe.train.beta),
    }


def _held_out_margins(record: dict | None, beta: float) -> dict:
    """Mean log p(chosen) - log p(rejected) on the eval pairs, for the reference and the tuned model. TRL
    logs the policy's log-probs and the reward margin beta * (policy margin - reference margin), so the
    reference's margin follows without a second pass."""
    if record is None or not isinstance(record.get("eval_logps/chosen"), float):
        return {"eval_margin_reference": None, "eval_margin_tuned": None}
    tuned = record["eval_logps/chosen"] - record["eval_logps/rejected"]
    return {"eval_margin_reference": tuned - record["eval_rewards/margins"] / beta, "eval_margin_tuned": tuned}

