"""`data.replay_loss: distribution` (tune/train/replay_loss.py): replay tokens train toward the base model's
whole next-token distribution (KL, the adapter switched off), the user's tokens keep their cross-entropy,
the mask travels with the labels, and what it cannot serve is one line at validate."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tune.train import replay_loss

ROWS = [  # one user row and one replay row; -100 where no loss
    {"input_ids": [5, 9, 14, 3, 22, 7], "labels": [-100, -100, -100, 3, 22, 7], "replay_mask": [0] * 6},
    {"input_ids": [8, 11, 40, 41], "labels": [-100, -100, 40, 41], "replay_mask": [1] * 4},
]


def batch(rows=ROWS, padding_free=False):
    collate = replay_loss.collator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free))
    return collate([dict(row) for row in rows])


def test_the_mask_is_padded_and_flattened_like_the_labels():
    padded = batch()
    assert padded["replay_mask"].tolist() == [[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert padded["labels"].tolist()[1] == [-100, -100, 40, 41, -100, -100]
    flat = batch(padding_free=True)
    assert flat["replay_mask"].tolist() == [[0] * 6 + [1] * 4]
    assert flat["labels"].shape == flat["replay_mask"].shape
    unmarked = batch([{k: v for k, v in ROWS[0].items() if k != "replay_mask"}])  # eval rows carry no mask
    assert unmarked["replay_mask"].tolist() == [[0] * 6]


@pytest.fixture
def adapted(tiny_model):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))


def by_hand(model, inputs):
    """Cross-entropy on the user's labelled tokens plus KL(base || tuned) on the replay ones, from full logits."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1].log_softmax(-1)
    with model.disable_adapter():
        base = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1].log_softmax(-1)
    target, replay = inputs["labels"][:, 1:], inputs["replay_mask"][:, 1:].bool()
    scored = target != -100
    ce = -logits.gather(-1, target.clamp(min=0)[..., None])[..., 0][scored & ~replay].sum()
    kl = (base.exp() * (base - logits)).sum(-1)[scored & replay].sum()
    return ce, kl, scored.sum()


def test_a_fresh_adapter_adds_nothing_for_replay_and_a_trained_one_pulls_back_by_the_kl(adapted):
    inputs = batch()
    ce, kl, tokens = by_hand(adapted, inputs)
    assert kl.item() == pytest.approx(0.0, abs=1e-6)  # LoRA's B starts at zero: tuned = base
    value, _ = replay_loss.loss(adapted, adapted.disable_adapter, dict(inputs))
    assert value.item() == pytest.approx((ce / tokens).item(), rel=1e-5)

    replay_only, _ = replay_loss.loss(adapted, adapted.disable_adapter, dict(batch(ROWS[1:])))
    replay_only.backward()
    assert replay_only.item() == 0.0
    # KL's gradient vanishes where the distributions agree (float rounding aside)
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for n, p in adapted.named_parameters() if "lora_" in n)
    adapted.zero_grad(set_to_none=True)

    with torch.no_grad():  # the adapter has moved the model
        for name, parameter in adapted.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 1.0)
    ce, kl, tokens = by_hand(adapted, inputs)
    assert kl.item() > 1e-3 * ce.item()  # 100x the tolerance below: a loss without the KL fails it
    value, accuracy = replay_loss.loss(adapted, adapted.disable_adapter, dict(inputs))
    assert value.item() == pytest.approx(((ce + kl) / tokens).item(), rel=1e-5)
    assert 0.0 <= accuracy <= 1.0
    base_weights = {n: p.clone() for n, p in adapted.named_parameters() if "lora_" not in n}
    value.backward()
    assert all(p.grad is None for n, p in adapted.named_parameters() if n in base_weights)  # only the adapter learns
    assert any(p.grad is not None and p.grad.any() for n, p in adapted.named_parameters() if "lora_A" in n)
