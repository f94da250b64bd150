"""Replay rows trained toward the base model's whole next-token distribution (`data.replay_loss:
distribution`), not only toward its greedy tokens.

A replay answer is the base model's greedy reply; as ordinary labels it teaches one token per position and
sharpens the model toward it. Learning without forgetting (Li & Hoiem, arXiv 1606.09282) and knowledge
distillation keep the teacher's soft targets instead: at every replay answer token the loss is KL(base ||
tuned) over the whole vocabulary, the base being the same weights with the adapter switched off. The user's
rows keep their cross-entropy. Both are summed per token and divided by the batch's labelled tokens, so a
replay token weighs what it did before. At the start (LoRA's B is zero) the tuned model is the base and the
replay term is exactly zero: it only pulls back once the adapter moves the model's answers
(docs/knowledge.md, note 37)."""

from __future__ import annotations

MASK = "replay_mask"  # per token: 1 on a replay row, 0 on the user's and generated rows


def mark(rows: list[dict], replay: list[dict]) -> None:
    """Give every training row its replay mask (a column of its own length, as TRL keeps list columns
    row by row); `replay` are the rows the base model answered."""
    ids = {id(row) for row in replay}
    for row in rows:
        row[MASK] = [int(id(row) in ids)] * len(row["input_ids"])


def collator(inner):
    """TRL's collator with the replay mask padded (or flattened, padding-free) like the labels."""
    import torch

    def collate(examples):
        masks = [torch.tensor(example.pop(MASK, [0] * len(example["input_ids"]))) for example in examples]
        batch = inner(examples)
        if "position_ids" in batch and "attention_mask" not in batch:  # padding-free: one flattened row
            masks = [torch.cat(masks)]
        width = batch["labels"].shape[1]
        batch[MASK] = torch.stack([torch.nn.functional.pad(m, (0, width - len(m))) for m in masks])
        return batch

    return collate


def loss(model, teacher_off, inputs: dict, num_items_in_batch=None):
    """(cross-entropy on the user's tokens + KL(base || tuned) on replay tokens) / labelled tokens, and the
    share of labelled tokens whose top prediction is the label. `teacher_off()` is a context that switches
    the adapter off. Only positions with a label reach the output layer (`logits_to_keep`)."""
    import torch
    import torch.nn.functional as F

    labels, replay = inputs.pop("labels"), inputs.pop(MASK).bool()
    target, replay = labels[:, 1:], replay[:, 1:]
    scored = target != -100
    keep = scored.any(0).nonzero().flatten()  # positions whose next token carries loss, in any row
    target, replay, scored = target[:, keep], replay[:, keep] & scored[:, keep], scored[:, keep]
    facts = scored & ~replay
    student = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float().log_softmax(-1)
    cross_entropy = -student.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[facts].sum()
    kl = student.new_zeros(())
    if replay.any():
        with torch.no_grad(), teacher_off():
            teacher = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float().log_softmax(-1)
        kl = F.kl_div(student[replay], teacher[replay], log_target=True, reduction="sum")
    tokens = num_items_in_batch if num_items_in_batch is not None else scored.sum()
    accuracy = (student.argmax(-1) == target)[scored].float().mean().item() if scored.any() else 0.0
    return (cross_entropy + kl) / torch.as_tensor(tokens).clamp(min=1), accuracy


def trainer_type(base, section, data, replay):
    """`base` (TRL's SFTTrainer) as it is, or, for `data.replay_loss: distribution`, the subclass below with
    every training row marked and a data line saying so. `replay`: the run's replay rows, or None."""
    if replay is None or section.replay_loss != "distribution":
        return base
    mark(data.train, replay.examples)
    data.notes.append(f"replay: {len(replay.examples)} rows train toward the base model's whole next-token "
                      "distribution (KL, adapter off), not its greedy tokens")
    return trainer_class(base)


def trainer_class(base):
    """`base` (TRL's SFTTrainer) training replay rows by `loss`; batches without replay tokens (evaluation,
    a batch of the user's rows only) take TRL's own path."""

    class ReplayDistributionTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.data_collator = collator(self.data_collator)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if MASK not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, MASK]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training or not bool(inputs[MASK].any()):
                inputs.pop(MASK)
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            peft_model = self.accelerator.unwrap_model(model)
            value, accuracy = loss(model, peft_model.disable_adapter, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                value = value * self.accelerator.num_processes  # as TRL: the count spans ranks, DDP averages
            self._metrics["train"]["mean_token_accuracy"].append(accuracy)
            return (value, None) if return_outputs else value

    return ReplayDistributionTrainer
