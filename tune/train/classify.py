"""`train.method: classify`: a sequence classifier from any base the hub's AutoModelForSequenceClassification
knows (BERT-family encoders, and decoder LMs such as Llama/Qwen/Mistral, which classify from the last
real token and so need the pad id in their config). LoRA (or QLoRA) adapts the body; the new label head
is trained fully and saved with the adapter (PEFT's SEQ_CLS task marks `classifier`/`score` as
modules_to_save; any other module the checkpoint lacked is added). Every eval writes accuracy,
macro-F1, per-class precision/recall/F1 and the confusion matrix (JSON and PNG) to the output dir."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from tune.data.classification import class_weights, prepare_labelled
from tune.infer.metrics import classification_report, report_lines, write_report
from tune.models.classifier import LABELS_FILE, load_base
from tune.models.load import load_tokenizer, lora_config
from tune.output import listed, write_json
from tune.recipe import Recipe
from tune.train import distributed
from tune.train import run as skeleton
from tune.train.arguments import arguments
from tune.train.run import RunResult

METRICS = ("eval_accuracy", "eval_macro_f1")


def train(recipe: Recipe, recipe_path: Path, echo=print, resume: bool = False, console=None,
          allow_data_change: bool = False) -> RunResult:
    run = skeleton.start(recipe, recipe_path, echo, resume, console, metric_keys=METRICS,
                         allow_data_change=allow_data_change)
    import transformers
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, TrainingArguments

    # ---- labels and data: every data problem surfaces before the model is loaded
    tokenizer = load_tokenizer(recipe.model, run.source)
    data = prepare_labelled(recipe.data, tokenizer, run.recipe_dir, recipe.train.seed)
    names = data.names
    weights = class_weights(recipe.train.class_weights, names, [row["labels"] for row in data.train])
    counts = Counter(row["labels"] for row in data.train)
    run.echo(f"data: {len(data.train)} train / {len(data.eval)} eval examples, labels "
             + listed(f"{name} {counts[i]}" for i, name in enumerate(names))
             + (f"; class weights {listed(f'{w:.3g}' for w in weights)}" if weights else ""))
    distributed.agree(recipe=recipe.model_dump(mode="json"), data=data.fingerprint)

    # ---- model and trainer
    transformers.set_seed(recipe.train.seed)
    base, new_modules = load_base(recipe.model, run.source, names, tokenizer, recipe.train.gradient_checkpointing)
    # SEQ_CLS makes PEFT train and save the head; modules the checkpoint lacked are trained fully too
    saved = sorted(set(recipe.adapter.modules_to_save) | set(new_modules)) or None
    model = get_peft_model(base, dataclasses.replace(lora_config(recipe.adapter, base), task_type="SEQ_CLS", modules_to_save=saved))
    evaluate_during = bool(data.eval) and recipe.train.eval_steps is not None
    args = TrainingArguments(**arguments(run, base.dtype, evaluate_during) | dict(
        per_device_eval_batch_size=max(recipe.train.batch_size, 32),  # no backward pass: wider batches fit
        # Length-grouped batches cut the padding computed; lengths vary a lot in review-like data.
        train_sampling_strategy="group_by_length" if recipe.data.group_by_length else "random",
        remove_unused_columns=False,  # rows hold only model inputs; PEFT's forward signature hides token_type_ids
        label_names=["labels"],
    ))
    reports: list[dict] = []

    def compute_metrics(prediction) -> dict:
        # Called once per eval with the whole eval split; writes the full report beside the run records.
        report = classification_report(prediction.label_ids, prediction.predictions.argmax(axis=-1), names)
        if run.main:  # every process gets the gathered predictions; one writes
            write_report(report, run.out_dir, step=trainer.state.global_step)
        reports.append(report)
        run.echo(f"eval: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    trainer = WeightedTrainer(
        weights, model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
        callbacks=skeleton.callbacks(run),
    )
    parameters = skeleton.attach(run, trainer)
    run.echo(f"model: {run.source} ({base.dtype}, quantization {recipe.model.quantization}) as a "
             f"{len(names)}-label classifier, {recipe.adapter.method} r={recipe.adapter.r} + head "
             f"({', '.join(sorted(_saved_modules(model)))}): {parameters[0]:,} trainable of {parameters[1]:,} parameters")

    # ---- train (the last report describes the final weights), then adapter + head, labels, labelled config
    skeleton.write_records(run, data.fingerprint)
    trained = skeleton.fit(run, trainer, has_eval=bool(data.eval))
    for line in report_lines(reports[-1]) if reports else []:
        run.echo(line)
    staging = skeleton.save(run, trainer, tokenizer)
    if staging is None:
        return RunResult({}, model)
    model.get_base_model().config.save_pretrained(staging)  # id2label, label2id, num_labels, pad_token_id
    write_json(staging / LABELS_FILE, {"labels": names, "id2label": dict(enumerate(names)),
                                       "label2id": {name: i for i, name in enumerate(names)}, "class_weights": weights})
    final = reports[-1] if reports else {}
    summary = skeleton.summary(run, trainer, trained, parameters, data.input_tokens, labels=names,
                               accuracy=final.get("accuracy"), macro_f1=final.get("macro_f1"))
    skeleton.finish(run, staging, summary)
    return RunResult(summary, model)


def _weighted_trainer_class():
    from transformers import Trainer

    class WeightedTrainer(Trainer):
        """Cross-entropy with optional per-label weights, computed here for every architecture alike."""

        def __init__(self, weights, **kwargs):
            super().__init__(**kwargs)
            self.label_weights = weights
            self.model_accepts_loss_kwargs = False  # our loss is a batch mean: let the Trainer scale accumulation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            labels = inputs["labels"]
            outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
            logits = outputs.logits.float()
            weight = torch.tensor(self.label_weights, device=logits.device) if self.label_weights else None
            loss = torch.nn.functional.cross_entropy(logits, labels, weight=weight)
            return (loss, outputs) if return_outputs else loss

    return WeightedTrainer


def WeightedTrainer(weights, **kwargs):  # noqa: N802  (a class built on first use keeps transformers' import lazy)
    return _weighted_trainer_class()(weights, **kwargs)


def _saved_modules(model) -> set[str]:
    from peft.utils import ModulesToSaveWrapper

    return {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, ModulesToSaveWrapper)}
