"""Supervised fine-tuning (LoRA, DoRA, rsLoRA, QLoRA) through TRL's SFTTrainer.

The data arrives pre-tokenized with exact labels (tune/data/instruction.py), so TRL only packs, pads,
batches and optimizes. What is SFT's own: the chat template, rows the base model writes before training
(rewordings and statements of the user's rows, tune/data/augment.py; replay answers), packing, and the
probe sets answered before, during (the guard, tune/train/knowledge.py) and after training."""

from __future__ import annotations

import json
from pathlib import Path

from tune.data import probes
from tune.data.augment import make_augment
from tune.data.augment_rows import read_rows, reviewed_augment
from tune.data.prepare import prepare
from tune.data.replay import make_replay
from tune.data.templates import resolve_template
from tune.infer.answer_cache import augment_generator, base_answerer, generator_source, round_trip_scorer
from tune.models.load import load_model, load_tokenizer, lora_config
from tune.output import write_text
from tune.recipe import Recipe
from tune.train import adapter_variants, benchmarks, distributed, knowledge, lm_head, replay_loss, scaling
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.guard import UNSEEN_ACCURACY, Guard, answerer
from tune.train.run import RunResult


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    """`console`: a rich Console that is a terminal gets a live progress bar with ETA."""
    run = skeleton.start(recipe, recipe_path, echo, resume, console,
                         allow_data_change=allow_data_change)
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # ---- tokenizer, template and data: every data problem surfaces before anything is written
    probe_sets = probes.load_probe_sets(recipe.data.probes, run.recipe_dir)
    tokenizer = load_tokenizer(recipe.model, run.source)
    template, template_label = resolve_template(recipe.data.template, tokenizer, run.recipe_dir)
    tokenizer.chat_template = template  # probes, replay and the saved adapter render prompts as training does
    data = prepare(recipe.data, tokenizer, template, run.recipe_dir, recipe.train.seed)
    augmented, users = None, len(data.train)
    if recipe.data.augment and recipe.data.augment.rows:  # reviewed rows: read and checked before the model loads
        augmented = reviewed_augment(*read_rows(recipe.data.augment.rows, run.recipe_dir), tokenizer, template,
                                     recipe.data, data.train_rows, data.report, recipe.train.keep == "best")
    generator = generator_source(recipe, run.echo)

    # ---- the model, and what the base says before training: rewordings and statements, probe answers and
    # replay rows (the generated rows join the data)
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded,
                       packed=recipe.data.packing)
    base_answer = base_answerer(model, tokenizer, recipe, run.source, template)
    if recipe.data.augment and not augmented:
        generator_calls = augment_generator(model, tokenizer, recipe, run.source, template, run.echo, generator)
        augmented = make_augment(generator_calls, tokenizer, template, recipe.data, data.train_rows, recipe.train.seed,
                                 data.report)
    if augmented:
        data.train += augmented.examples
        data.fingerprint["augment"] = augmented.fingerprint
        data.notes.append(augmented.note)
    sets = probe_sets + ([augmented.heldout] if augmented and augmented.heldout else [])
    asked = knowledge.questions_of(recipe.data, data.train_rows)
    evaluate = knowledge.evaluator(sets, asked, recipe.data.system_prompt, recipe.data.probe_max_new_tokens)
    before = knowledge.timed(evaluate, base_answer, 0, None, sets, run.echo, "base model") if sets else None
    base_items = benchmarks.base_items(run.tasks, recipe, model, tokenizer, run.echo)  # train.kept_by: tasks
    if recipe.data.replay:
        replay = make_replay(base_answer, tokenizer, template, recipe.data, data.train, run.recipe_dir,
                             recipe.train.seed, data.report)
        data.train += replay.examples
        data.fingerprint["replay"] = replay.fingerprint
        data.notes.append(replay.note)
    data.train += augmented.passages if augmented else []  # after replay is sized: a passage is no reply
    trainer_type = replay_loss.trainer_type(SFTTrainer, recipe.data, data, replay if recipe.data.replay else None)
    epochs = None
    if recipe.train.epochs == "auto":
        epochs = knowledge.auto_epochs(users, len(augmented.examples) + len(augmented.passages) if augmented else 0)
        data.notes.append(f"train.epochs: auto = {epochs}: each of your {users} rows about {knowledge.EXPOSURES} "
                          "times, its generated rows counted")
    trained_tokens = sum(sum(label != -100 for label in row["labels"]) for row in data.train)
    run.echo(f"data: {len(data.train)} train / {len(data.eval)} eval examples, {trained_tokens} trained tokens "
             f"per epoch, template {template_label}")
    for note in data.notes:
        run.echo(f"data: {note}")
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=data.fingerprint)  # same seed, rows and order

    # ---- trainer; the guard answers the probe sets every train.eval_steps
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    config = SFTConfig(
        **arguments(run, model.dtype, evaluate_during, epochs),
        max_length=recipe.data.max_length,
        # BFD packing is padding-free: rows are flattened with per-example position_ids, from which
        # transformers builds a block-diagonal mask (SDPA/eager) or cu_seq_lens (FlashAttention), and the
        # pre-computed labels travel with their tokens, so completion-only loss survives per example.
        packing=recipe.data.packing,
        packing_strategy="bfd",  # not "wrapped": that one cuts examples and lets them attend to each other
        padding_free=recipe.data.packing,
        # Length-grouped batches cut the padding computed when rows are not packed.
        train_sampling_strategy="group_by_length" if recipe.data.group_by_length and not recipe.data.packing else "random",
    )
    measure = benchmarks.kept_by_tasks(lambda policy, step: evaluate(answerer(policy, tokenizer), step, before, True,
                                                                     round_trip_scorer(policy, tokenizer, template)),
                                       run.tasks, recipe, tokenizer, base_items)
    guard = Guard(measure, recipe.train.eval_steps, recipe.train.min_kept_share, recipe.train.stop_after, run.metrics,
                  run.echo, UNSEEN_ACCURACY, kept_of=benchmarks.kept_of(base_items), scales=scaling.SCALES)
    adapter = lora_config(recipe.adapter, model)
    adapter = adapter_variants.calibrate(run, model, adapter, tokenizer, data.train)  # CorDA: before attaching
    trainer = trainer_type(
        model=model, args=config, processing_class=tokenizer, peft_config=adapter,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        callbacks=skeleton.callbacks(run, guard if sets and recipe.train.eval_steps else None),
    )
    parameters = skeleton.attach(run, trainer)
    run.echo(lm_head.install(trainer, run.on_gpu, run.sharded))
    skeleton.model_line(run, model.dtype, parameters, f"{recipe.adapter.method} r={recipe.adapter.r}")
    if sets and recipe.train.eval_steps:
        run.echo(knowledge.describe(sets, asked, before, guard.kept_of))

    # ---- train, keep the adapter the rule picks, then the generated rows and the probe table beside it
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(data.eval))
    kept, after = guard.restore_best(trainer.model) if recipe.train.keep == "best" and guard.history else (
        "kept the final weights", guard.evaluation_at(trainer.state.global_step))
    if sets and after is None:  # no evaluation of the kept weights yet
        after = knowledge.timed(evaluate, answerer(trainer.model, tokenizer), trainer.state.global_step, before,
                                sets, run.echo, "tuned model")
    elif after is not None:  # the guard's evaluation left out the trained sets: the table shows them
        after = knowledge.complete(after, answerer(trainer.model, tokenizer), sets, recipe.data.system_prompt,
                                   recipe.data.probe_max_new_tokens)
    staging = skeleton.save(run, trainer, tokenizer)
    if staging is None:
        return RunResult({}, trainer.model)
    for name, generated in (("replay", recipe.data.replay and replay), ("augment", augmented)):
        if generated:
            write_text(staging / f"{name}.jsonl", "".join(json.dumps(row) + "\n" for row in generated.rows))
    shares = knowledge.report(sets, before, after, staging, run.echo) if sets else None
    if guard.history:
        run.echo(f"guard: {kept}")
    summary = skeleton.summary(run, trainer, trained, parameters, trained_tokens, template=template_label,
                               probes=shares, kept=kept if guard.history else None,
                               unseen_accuracy_base=before.score if before else None,
                               unseen_accuracy_tuned=after.score if after else None,
                               stopped_early=guard.stopped_early, guard_seconds=round(guard.seconds, 1))
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)
