"""Pairwise accuracy (how often the chosen reply scores above the rejected one) over every pair that a
logged step or an evaluation covers.

TRL's RewardTrainer, DPOTrainer and ORPOTrainer keep one accuracy per batch and log the mean of those
means, so a short batch weighs as much as a full one: 5 held-out pairs in batches of 4 + 1, with 2 of
the 4 right and the lone pair right, logged 75% for 3 of 5 right. Each batch's accuracy is turned back
into its count of wins (TRL counts `chosen > rejected`, so a tie is no win), and the number logged is
wins over pairs."""

from __future__ import annotations


def count_pairs(trainer, key: str) -> None:
    """Make the built trainer log `key` (its per-batch pair accuracy, e.g. "rewards/accuracies") as wins
    over all pairs since its last log line or over the whole evaluation."""
    pairs_behind = {"train": [], "eval": []}  # how many pairs each per-batch value the trainer holds covers
    # Every process holds a batch of the same size (accelerate repeats pairs to even out the last one), and
    # the trainers average over all processes' pairs.
    processes = trainer.args.world_size
    trainer_log = trainer.log

    def counted(step, mode: str):
        def wrapper(model, inputs, *args, **kwargs):
            before = len(_values(trainer, mode, key) or ())
            result = step(model, inputs, *args, **kwargs)
            if len(_values(trainer, mode, key) or ()) == before + 1:
                pairs_behind[mode].append(_pairs(inputs) * processes)
            return result
        return wrapper

    def log(logs, *args, **kwargs):
        now = "train" if trainer.model.training else "eval"  # as the trainers tell which values a log line takes
        values, sizes = _values(trainer, now, key), pairs_behind[now]
        if values and len(values) == len(sizes):  # one value in place of many: the trainer's mean is exact
            wins = sum(round(float(value) * size) for value, size in zip(values, sizes))
            values[:], sizes[:] = [wins / sum(sizes)], [sum(sizes)]
        result = trainer_log(logs, *args, **kwargs)
        if not _values(trainer, now, key):
            sizes.clear()  # the trainer consumed its values
        return result

    trainer.training_step = counted(trainer.training_step, "train")
    trainer.prediction_step = counted(trainer.prediction_step, "eval")
    trainer.log = log


def _values(trainer, mode: str, key: str) -> list | None:
    """The trainer's per-batch values of `key`, read without creating an empty entry (the trainers
    divide by each list's length)."""
    if hasattr(trainer, "_stored_metrics"):  # ORPO keeps TRL's older store, its eval keys prefixed
        return trainer._stored_metrics[mode].get(f"eval_{key}" if mode == "eval" else key)
    return trainer._metrics[mode].get(key)


def _pairs(inputs: dict) -> int:
    """Pairs in one batch: ORPO's batches hold chosen and rejected apart, the others one after the other."""
    if "chosen_input_ids" in inputs:
        return len(inputs["chosen_input_ids"])
    return len(inputs["input_ids"]) // 2
