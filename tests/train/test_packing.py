"""Packing (`data.packing: true`) through the real trainer setup: a packed batch's loss is the token-weighted
mean of the same examples run one by one, labels keep their per-example prompt masks, and no token
attends across an example boundary. Length-grouped batching applies only when packing is off.

The trainer is built by tune.train.sft.train exactly as `tune run` builds it; only SFTTrainer.train is
replaced, so each test can take a batch from the trainer's own dataloader."""

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import SFTTrainer

from tests.conftest import write_recipe
from tune import recipe as recipe_io
from tune.train.sft import train


def build_trainer(tmp_path, monkeypatch, data=None, model=None, batch_size=2):
    """The SFTTrainer tune would train, and the unpacked rows tune handed it."""
    seen = {}
    init = SFTTrainer.__init__

    def capture_init(self, *args, **kwargs):
        seen["rows"] = kwargs["train_dataset"].to_list()
        init(self, *args, **kwargs)

    def capture_train(self, resume_from_checkpoint=None):
        seen["trainer"] = self

    monkeypatch.setattr(SFTTrainer, "__init__", capture_init)
    monkeypatch.setattr(SFTTrainer, "train", capture_train)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_recipe(tmp_path / "r.yaml", data={"packing": True, **(data or {})},
                        model={"dtype": "float32", **(model or {})}, train={"batch_size": batch_size})
    train(recipe_io.load(path), path, echo=lambda line: None)
    trainer = seen["trainer"]
    trainer.model.eval()  # no dropout: the packed and one-by-one forwards must be the same function
    return trainer, seen["rows"]


def segments(batch) -> list[slice]:
    """Where each example sits in a padding-free row: a new example starts where position_ids is 0."""
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
    return [slice(a, b) for a, b in zip(starts, starts[1:])]


def token_nll(logits, labels):
    """Next-token NLL per position and the mask of positions that carry loss (labels shifted by one)."""
    shifted = labels[..., 1:]
    nll = torch.nn.functional.cross_entropy(logits[..., :-1, :].flatten(0, -2).float(), shifted.flatten().clamp(min=0),
                                            reduction="none").view(shifted.shape)
    mask = shifted != -100
    return nll * mask, mask


@pytest.mark.parametrize("attn", ["auto", "sdpa", "eager"])
def test_packed_loss_is_the_token_weighted_mean_of_one_by_one_losses(attn, tiny_model, tmp_path, monkeypatch):
    trainer, rows = build_trainer(tmp_path, monkeypatch, model={"attn_implementation": attn})
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    # auto on a CPU: each document of a packed row gets its own causal SDPA call (tune/models/attention.py)
    expected = "tune_packed_sdpa" if attn == "auto" else attn
    assert model.get_base_model().config._attn_implementation == expected

    # Padding-free: one flattened row with position ids, no attention mask and not a single pad token.
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    parts = segments(batch)
    assert len(parts) >= 4, "the batch should hold several examples"
    assert sum(p.stop - p.start for p in parts) == batch["input_ids"].shape[1]

    by_ids = {tuple(row["input_ids"]): row["labels"] for row in rows}
    sums, counts, means = [], [], []
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch))  # the exact loss training optimizes
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for part in parts:
            ids, labels = batch["input_ids"][:, part], batch["labels"][:, part]
            # Completion-only labels survived packing: the segment's labels are the ones tune computed
            # for this example (its first label is never predicted from inside the example anyway).
            original = by_ids[tuple(ids[0].tolist())]
            assert labels[0, 1:].tolist() == original[1:] and labels[0, 0] == -100
            assert original.count(-100) > 1, "the prompt is masked"
            alone = model(input_ids=ids, use_cache=False).logits
            nll, mask = token_nll(alone, labels)
            sums.append(nll.sum())
            counts.append(mask.sum())
            means.append(nll.sum() / mask.sum())
            # And token by token: the example's logits inside the packed row equal its logits alone.
            assert torch.allclose(packed_logits[:, part], alone, atol=1e-5, rtol=0)

    token_weighted = torch.stack(sums).sum() / torch.stack(counts).sum()
    assert abs(packed.item() - token_weighted.item()) < 1e-5
    # "Mean" is per trained token, not per example: the two differ when examples differ in length.
    assert abs(packed.item() - torch.stack(means).mean().item()) > 1e-4


def test_no_attention_crosses_example_boundaries(tiny_model, tmp_path, monkeypatch):
    trainer, _ = build_trainer(tmp_path, monkeypatch)
    batch = next(iter(trainer.get_train_dataloader()))
    first, rest = segments(batch)[0], slice(segments(batch)[1].start, None)
    changed = batch["input_ids"].clone()
    changed[:, first] = (changed[:, first] + 7) % trainer.model.config.vocab_size

    def logits(ids, **kwargs):
        with torch.no_grad():
            return trainer.model(input_ids=ids, use_cache=False, **kwargs).logits

    packed = {"position_ids": batch["position_ids"]}
    assert not torch.allclose(logits(changed, **packed)[:, first], logits(batch["input_ids"], **packed)[:, first])
    # Changing the first example moves nothing after it...
    assert torch.allclose(logits(changed, **packed)[:, rest], logits(batch["input_ids"], **packed)[:, rest],
                          atol=1e-6, rtol=0)
    # ...while the same row read as one causal sequence would leak it (so the check above can fail).
    assert not torch.allclose(logits(changed)[:, rest], logits(batch["input_ids"])[:, rest], atol=1e-3)


def test_group_by_length_only_when_not_packing(tiny_model, tmp_path, monkeypatch):
    grouped, _ = build_trainer(tmp_path / "a", monkeypatch, data={"packing": False, "group_by_length": True})
    assert isinstance(grouped._get_train_sampler(), LengthGroupedSampler)
    assert "attention_mask" in next(iter(grouped.get_train_dataloader()))
    packed, _ = build_trainer(tmp_path / "b", monkeypatch, data={"group_by_length": True})
    assert not isinstance(packed._get_train_sampler(), LengthGroupedSampler)


def test_packed_run_trains(tiny_model, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", data={"packing": True}, train={"max_steps": 6, "batch_size": 2})
    summary = train(recipe_io.load(path), path, echo=lambda line: None).summary
    assert summary["steps"] == 6
    assert summary["last_loss"] < summary["first_loss"]
