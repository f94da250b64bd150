"""Reward optimization: GRPO (and its DAPO / Dr. GRPO / ... losses) through TRL's GRPOTrainer, with LoRA,
DoRA, rsLoRA or QLoRA. Each step samples `grpo.num_generations` completions per prompt in one batched
`generate` call, scores them with the recipe's rewards (tune/train/rewards.py), and moves the policy toward
the completions that beat their group. The loss sits near 0 by construction; the reward is what moves.

What is GRPO's own here: the rewards checked on one real completion before anything is written, the
held-out prompts and probes answered greedily by the base and at every evaluation (tune/train/guard.py),
and the adapter kept at the end by the recipe's rule, not simply the last one."""

from __future__ import annotations

import json
from pathlib import Path

from tune.data import probes
from tune.data.prompts import ROW, prepare_prompts
from tune.errors import TuneError
from tune.infer.answer_cache import base_answerer
from tune.models.load import load_model, lora_config
from tune.models.run_dir import check_fits_base
from tune.output import write_text
from tune.recipe import Recipe
from tune.recipe.rules import generation_batch_problem
from tune.train import benchmarks, distributed, rewards
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.guard import (Guard, ZeroSpreadWarning, answerer, base_right, chosen_by_report, evaluator, report,
                              report_split, reported, shown, training_rewards)
from tune.train.run import RunResult
from tune.train.sampling import autocast_sampling, generation_engine, replaying

METRICS = ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length",
           "completions/clipped_ratio", "replay_loss")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    start = skeleton.starting_adapter(recipe, Path(recipe_path).resolve().parent) if recipe.model.adapter else None
    grpo = recipe.grpo
    run = skeleton.start(recipe, recipe_path, echo, resume, console, metric_keys=METRICS,
                         allow_data_change=allow_data_change)
    if start is not None:
        check_fits_base(start, recipe.model.name, run.source)
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    # ---- rewards, tokenizer, prompts: every problem surfaces before anything is written
    reward_funcs, reward_records, weights = rewards.build_all(recipe.reward, run.recipe_dir, run.echo)
    run.metrics.keys += tuple(f"rewards/{r.__name__}/mean" for r in reward_funcs)
    probe_sets = probes.load_probe_sets(recipe.data.probes, run.recipe_dir)
    tokenizer, template_label, data = skeleton.prepare_data(run, prepare_prompts, lambda data, template: (
        f"{len(data.train)} train / {len(data.eval)} held-out prompts, template {template}; rewards "
        f"{', '.join(r.__name__ for r in reward_funcs)} (weights {', '.join(f'{w:g}' for w in weights)})"),
        rewards=reward_records)
    train_rows, eval_rows = data.train, data.eval
    rewards.bind_rows(reward_funcs, train_rows)
    problem = generation_batch_problem(recipe.train, grpo, distributed.world_size())  # validate assumed 1 process
    if problem:
        raise TuneError(problem)
    if grpo.rollback and distributed.world_size() > 1:  # each process decides from its own answers
        raise TuneError("grpo.rollback: runs on one process only; drop it or train without --nproc")

    # ---- the model, and the base's greedy answers: they check every reward once, and are the "before"
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded)
    if start is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
    limit = grpo.eval_max_new_tokens or grpo.max_completion_length
    # the guard chooses by one part of the held-out prompts; the tuned reward is reported on the other
    chosen_by, reported_on = report_split(eval_rows, grpo.report_share if grpo.keep == "best" else 0, recipe.train.seed)
    split = reported_on is not chosen_by
    evaluate = evaluator(reward_funcs, weights, chosen_by, probe_sets, recipe, tokenizer, limit)
    evaluate_report = evaluator(reward_funcs, weights, reported_on, [], recipe, tokenizer, limit)
    base_answer = base_answerer(model, tokenizer, recipe, run.source, tokenizer.chat_template)
    checked = train_rows[:2]  # two rows: a function that returns one reward per batch is caught here, not mid-run
    untrained = transformers.TrainerState()  # what a trainer holds until train() starts (TRL scores nothing before)
    first, _ = rewards.score_answers(reward_funcs, weights, checked, base_answer(
        [row["prompt"] for row in checked], limit), tokenizer, untrained)
    before = evaluate(base_answer, untrained)
    base_items = benchmarks.base_items(run.tasks, recipe, model, tokenizer, run.echo)  # train.kept_by: tasks
    before_report = reported(evaluate_report(base_answer, untrained), before) if split else before
    run.echo(f"base model: held-out reward {shown(before_report.score)}"
             + (f" ({len(reported_on)} prompts; {shown(before.score)} on the {len(chosen_by)} the guard chooses by)"
                if split else "")
             + (f", probes right {base_right(probe_sets, before)}" if probe_sets else "") + f"; every reward checked on its answer to {train_rows[0][rewards.WHERE]} ({shown(first[0])})")

    # ---- trainer
    config = GRPOConfig(
        **arguments(run, model.dtype, evaluate_during=False),  # tune's guard evaluates, greedily
        num_generations=grpo.num_generations, generation_batch_size=grpo.generation_batch_size,
        max_completion_length=grpo.max_completion_length, temperature=grpo.temperature, top_p=grpo.top_p,
        beta=grpo.beta, loss_type=grpo.loss_type, scale_rewards=grpo.scale_rewards,
        num_iterations=grpo.num_iterations, mask_truncated_completions=grpo.mask_truncated_completions,
        reward_weights=weights, remove_unused_columns=False, log_completions=False,
        **generation_engine(grpo, run),
    )
    # the trainer's own state (TRL's trainer_state, at the guard's step), looked up when the guard evaluates
    guard = Guard(benchmarks.kept_by_tasks(lambda policy, _step: evaluate(answerer(policy, tokenizer), trainer.state,
                                                                        before), run.tasks, recipe, tokenizer, base_items),
                        recipe.train.eval_steps, grpo.min_kept_share, grpo.stop_after, run.metrics, run.echo,
                        rollback=grpo.rollback,  # completions sampled by the rejected weights are not trained on
                        on_rollback=lambda: setattr(trainer, "_buffered_inputs", None), kept_of=benchmarks.kept_of(base_items))
    trainer_class, replay = replaying(autocast_sampling(GRPOTrainer, run.precision == "bf16-autocast"), recipe,
                                      base_answer, tokenizer, data, run.recipe_dir, run.echo)
    trainer = trainer_class(
        model=model, reward_funcs=reward_funcs, args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": row["prompt"], ROW: i} for i, row in enumerate(train_rows)]), peft_config=None if start else lora_config(recipe.adapter, model),
        callbacks=skeleton.callbacks(run, guard if eval_rows or probe_sets else None)
        + [ZeroSpreadWarning(grpo.zero_spread_warning, run.echo, grpo.scale_rewards)],
    )
    parameters = skeleton.attach(run, trainer)
    adapter = f"continuing the adapter of {start}" if start else f"{recipe.adapter.method} r={recipe.adapter.r}"
    skeleton.model_line(run, model.dtype, parameters, adapter, f"{grpo.loss_type} loss, {grpo.num_generations} "
                        f"completions per prompt, beta {grpo.beta}"
                        + ((" (reference: a frozen copy of the adapter continued)" if start else
                            " (reference: the base, adapter off)") if grpo.beta else ""))

    # ---- train, keep the adapter the rule picks, and report before/after
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=False)
    kept, after = guard.restore_best(trainer.model) if grpo.keep == "best" and guard.history else (
        "kept the final weights", guard.evaluation_at(trainer.state.global_step))
    if after is None and (eval_rows or probe_sets):  # no evaluation of the kept weights yet (e.g. a resumed run)
        after = evaluate(answerer(trainer.model, tokenizer), trainer.state, before)
    after_report = after
    if split and after:
        after_report = reported(evaluate_report(answerer(trainer.model, tokenizer), trainer.state), after)
    staging = skeleton.save(run, trainer, tokenizer, selected_adapters=["default"])  # never TRL's frozen "ref" copy
    if staging is None:
        return RunResult({}, trainer.model)
    if replay:
        write_text(staging / "replay.jsonl", "".join(json.dumps(row) + "\n" for row in replay.rows))
    own = report(before_report, after_report, reported_on, probe_sets, staging, run.echo)
    own |= training_rewards(run.metrics.records)
    own |= chosen_by_report(before, after, chosen_by, reported_on, run.echo) if split else {}
    run.echo(f"guard: {kept}")
    summary = skeleton.summary(run, trainer, trained, parameters, 0, template=template_label, rewards=reward_records,
                               reward_weights=weights, kept=kept, stopped_early=guard.stopped_early, rollbacks=guard.rollbacks,
                               guard_seconds=round(guard.seconds, 1), **own)
    # prompt and completion tokens through the policy (TRL's count), not a per-epoch token count
    summary["trained_tokens_per_second"] = round(trainer.state.num_input_tokens_seen / max(trained.seconds, 1e-9), 1)
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)
