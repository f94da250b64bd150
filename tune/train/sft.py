"""Supervised fine-tuning (LoRA, DoRA, rsLoRA, QLoRA) through TRL's SFTTrainer.

The data arrives pre-tokenized with exact labels (tune/data/instruction.py), so TRL only packs, pads,
batches and optimizes. What is SFT's own: the chat template, replay rows answered by the base model,
packing, and probes answered before and after training (tune/data/probes.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tune.data import probes
from tune.data.prepare import prepare
from tune.data.replay import make_replay
from tune.data.templates import resolve_template
from tune.infer.answer_cache import base_answerer
from tune.infer.generate import generate_batch
from tune.models.load import load_model, load_tokenizer, lora_config
from tune.output import write_json, write_text
from tune.recipe import Recipe
from tune.train import distributed, lm_head
from tune.train import run as skeleton
from tune.train.arguments import arguments
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

    # ---- the model, and what the base says before training: probe answers, replay rows (joining the data)
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, run.source, recipe.train.gradient_checkpointing, sharded=run.sharded,
                       packed=recipe.data.packing)
    base_answer = base_answerer(model, tokenizer, recipe, run.source, template)
    base_answers = _probe(base_answer, probe_sets, recipe, run.echo, "base model") if probe_sets else []
    if recipe.data.replay:
        replay = make_replay(base_answer, tokenizer, template, recipe.data, data.train, run.recipe_dir,
                             recipe.train.seed, data.report)
        data.train += replay.examples
        data.fingerprint["replay"] = replay.fingerprint
        data.notes.append(replay.note)
    trained_tokens = sum(sum(label != -100 for label in row["labels"]) for row in data.train)
    run.echo(f"data: {len(data.train)} train / {len(data.eval)} eval examples, {trained_tokens} trained tokens "
             f"per epoch, template {template_label}")
    for note in data.notes:
        run.echo(f"data: {note}")
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=data.fingerprint)  # same seed, rows and order

    # ---- trainer
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    config = SFTConfig(
        **arguments(run, model.dtype, evaluate_during),
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
    trainer = SFTTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=lora_config(recipe.adapter),
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer)
    run.echo(lm_head.install(trainer, run.on_gpu, run.sharded))
    run.echo(f"model: {run.source} ({model.dtype}, quantization {recipe.model.quantization}), "
             f"{recipe.adapter.method} r={recipe.adapter.r}: {parameters[0]:,} trainable of {parameters[1]:,} parameters")

    # ---- train, then the adapter with replay rows and the probe table beside it
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(data.eval))
    staging = skeleton.save(run, trainer, tokenizer)
    if staging is None:
        return RunResult({}, trainer.model)
    if recipe.data.replay:
        write_text(staging / "replay.jsonl", "".join(json.dumps(row) + "\n" for row in replay.rows))
    probe_shares = None
    if probe_sets:
        tuned_answers = _probe(lambda conversations, limit: generate_batch(trainer.model, tokenizer, conversations, limit),
                               probe_sets, recipe, run.echo, "tuned model")
        probe_shares = _report_probes(probe_sets, base_answers, tuned_answers, staging, run.echo)
    summary = skeleton.summary(run, trainer, trained, parameters, trained_tokens, template=template_label,
                               probes=probe_shares)
    skeleton.finish(run, staging, summary)
    return RunResult(summary, trainer.model)


def _probe(answer, probe_sets, recipe: Recipe, echo, who: str) -> list[list[str]]:
    started = time.perf_counter()
    answers = probes.answer_sets(answer, probe_sets, recipe.data.system_prompt, recipe.data.probe_max_new_tokens)
    echo(f"probes: the {who} answered {sum(len(s.questions) for s in probe_sets)} questions in "
         f"{time.perf_counter() - started:.0f} s")
    return answers


def _report_probes(probe_sets, base_answers, tuned_answers, staging: Path, echo) -> dict:
    rows, shares = probes.score(probe_sets, base_answers, tuned_answers)
    write_text(staging / "probes.md", probes.markdown(rows, shares))
    write_json(staging / "probes.json", {"shares": shares, "rows": rows})
    for probe_set in probe_sets:
        echo(f"\nprobes {probe_set.name} (first mark: tuned right, second: base right):")
        for line in probes.table_lines(rows, probe_set.name, limit=8):
            echo(line)
    echo("")
    for line in probes.summary_lines(shares):
        echo(line)
    return shares
