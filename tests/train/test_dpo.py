"""DPO on the tiny model: the policy's log-probability margin (chosen minus rejected) on the training
pairs grows past the base model's, rewards reach metrics.jsonl, and SFT-then-DPO trains the SFT adapter
against the SFT model itself (TRL's frozen "ref" copy), never the raw base."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import REPO, write_recipe
from tune import recipe as recipe_io
from tune.data.preference import prepare_pairs
from tune.errors import TuneError
from tune.models.load import load_model, load_tokenizer
from tune.recipe import ModelSection
from tune.train.dpo import train as dpo_train
from tune.train.sft import train as sft_train
from tests.train.test_sft import LORA_PARAMS

PAIRS = REPO / "data_templates" / "preference.jsonl"
QUIET = {"echo": lambda line: None}


def dpo_recipe(path, **sections):
    sections.setdefault("data", {}).update({"train": str(PAIRS), "format": "preference", "max_length": 96})
    sections.setdefault("train", {}).update({"method": "dpo", "beta": 0.1, "max_steps": 6})
    return write_recipe(path, **sections)


def training_pairs(tiny_model):
    tokenizer = load_tokenizer(ModelSection(name=str(tiny_model)), str(tiny_model))
    data = recipe_io.DataSection(train=str(PAIRS), format="preference", max_length=96)
    return prepare_pairs(data, tokenizer, tokenizer.chat_template, None, 0).train


def margin(model, pairs) -> float:
    """Mean over pairs of log p(chosen | prompt) - log p(rejected | prompt), summed over reply tokens."""
    model.eval()
    totals = []
    for pair in pairs:
        sides = []
        for side in ("chosen_ids", "rejected_ids"):
            ids = torch.tensor([pair["prompt_ids"] + pair[side]])
            with torch.no_grad():
                logps = model(ids).logits[0, :-1].float().log_softmax(-1)
            picked = logps.gather(1, ids[0, 1:, None])[:, 0]
            sides.append(picked[len(pair["prompt_ids"]) - 1:].sum())
        totals.append(sides[0] - sides[1])
    return torch.stack(totals).mean().item()


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_dpo_widens_the_margin_over_the_base(quantization, tiny_model, tmp_path):
    pairs = training_pairs(tiny_model)
    base = margin(load_model(ModelSection(name=str(tiny_model), dtype="float32", quantization=quantization), str(tiny_model)), pairs)
    # Eval on the training pairs, in one batch, so the run's held-out margins are the means computed here.
    path = dpo_recipe(tmp_path / "r.yaml", model={"quantization": quantization},
                      data={"eval": str(PAIRS), "allow_eval_overlap": True}, train={"batch_size": len(pairs)})
    result = dpo_train(recipe_io.load(path), path, **QUIET)
    trained = margin(result.model, pairs)
    print(f"margin ({quantization}): base {base:.3f} -> dpo {trained:.3f}")
    assert trained > base + 1.0
    tolerance = 1e-3 if quantization == "none" else 0.05
    assert result.summary["eval_margin_reference"] == pytest.approx(base, abs=tolerance)
    assert result.summary["eval_margin_tuned"] == pytest.approx(trained, abs=tolerance)

    summary = result.summary
    assert summary["trainable_parameters"] == LORA_PARAMS and summary["steps"] == 6
    assert summary["reward_accuracy"] is not None and summary["reward_margin"] > 0
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, 7))
    assert all({"rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"} <= r.keys()
               for r in logged)
    assert logged[0]["rewards/margins"] == 0.0  # step 1: the new adapter is zero, policy == reference
    with result.model.disable_adapter():  # the reference: the base with the adapter off
        assert margin(result.model, pairs) == pytest.approx(base, abs=1e-3 if quantization == "none" else 0.05)


def test_sft_then_dpo_uses_the_sft_model_as_reference(tiny_model, tmp_path):
    from peft import PeftModel
    from trl.trainer.utils import use_adapter

    sft_path = write_recipe(tmp_path / "sft.yaml", output={"dir": str(tmp_path / "sft")})
    sft_train(recipe_io.load(sft_path), sft_path, **QUIET)
    sft_dir = tmp_path / "sft"
    path = dpo_recipe(tmp_path / "dpo.yaml", model={"adapter": str(sft_dir)}, output={"dir": str(tmp_path / "dpo")})
    result = dpo_train(recipe_io.load(path), path, **QUIET)
    model, pairs = result.model, training_pairs(tiny_model)

    # The adapter trained is the SFT adapter (same shape, one set of trainable weights, no second base).
    assert set(model.peft_config) == {"default", "ref"}
    assert result.summary["trainable_parameters"] == LORA_PARAMS
    sft_weights = load_file(sft_dir / "adapter_model.safetensors")
    state = model.state_dict()
    for key, value in sft_weights.items():
        assert torch.equal(state[key.replace(".weight", ".ref.weight")], value), key  # frozen starting copy
    assert any(not torch.equal(state[key.replace(".weight", ".default.weight")], value)
               for key, value in sft_weights.items())  # DPO moved the trained one

    # The reference is the SFT model: base + SFT adapter, not the raw base.
    sft_model = PeftModel.from_pretrained(load_model(ModelSection(name=str(tiny_model), dtype="float32"), str(tiny_model)), sft_dir)
    sft_margin = margin(sft_model, pairs)
    with use_adapter(model, "ref"):  # what TRL's DPOTrainer runs for the reference log-probs
        assert margin(model, pairs) == pytest.approx(sft_margin, abs=1e-4)
    with use_adapter(model, None):
        assert margin(model, pairs) != pytest.approx(sft_margin, abs=1e-2)
    print(f"margin: sft {sft_margin:.3f} -> sft+dpo {margin(model, pairs):.3f}")
    assert margin(model, pairs) > sft_margin + 1.0

    # The saved adapter is one plain adapter on the raw base: merge and export need nothing else.
    out = tmp_path / "dpo"
    assert not (out / "ref").exists()
    assert set(load_file(out / "adapter_model.safetensors")) == set(sft_weights)
    assert recipe_io.load(out / "recipe.yaml").model.adapter == str(sft_dir)


def test_an_adapter_of_another_base_is_refused(tiny_model, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(1, 1)}, other / "adapter_model.safetensors")
    (other / "recipe.yaml").write_text("model:\n  name: some-org/another-model\n")
    path = dpo_recipe(tmp_path / "r.yaml", model={"adapter": str(other)})
    with pytest.raises(TuneError) as caught:
        dpo_train(recipe_io.load(path), path, **QUIET)
    assert caught.value.problems == [f"model.adapter: {other} was trained on some-org/another-model, but model.name "
                                     "is tiny-llama; an adapter only fits the base it was trained on"]
    assert not (tmp_path / "out").exists()


def test_group_by_length_batches_pairs_of_similar_length(tiny_model, tmp_path, monkeypatch):
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import DPOTrainer

    def padded_widths(grouped: bool) -> list[int]:
        seen = {}
        monkeypatch.setattr(DPOTrainer, "train", lambda self, resume_from_checkpoint=None: seen.setdefault("t", self))
        path = dpo_recipe(tmp_path / str(grouped) / "r.yaml", data={"group_by_length": grouped}, train={"batch_size": 4},
                          output={"dir": str(tmp_path / str(grouped) / "out")})
        dpo_train(recipe_io.load(path), path, **QUIET)
        trainer = seen["t"]
        assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler) is grouped
        return [batch["input_ids"].shape[1] for batch in trainer.get_train_dataloader()]

    (tmp_path / "True").mkdir()
    (tmp_path / "False").mkdir()
    pairs = training_pairs(tiny_model)
    longest = max(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs)
    grouped, shuffled = padded_widths(True), padded_widths(False)
    assert grouped[0] == longest  # the sampler puts the batch that holds the longest pair first
    assert sum(grouped) < sum(shuffled)  # every batch is padded to its longest: similar lengths pad less
