"""The compact output layer (tune/train/lm_head.py) computes the same loss as full logits, token for
token, in float32: on its own, inside the SFT trainer tune builds (packed and not), and in DPO against
TRL's own fused head. Gradients too, since it takes them in the forward pass."""

import pytest
import torch
from trl import DPOTrainer

from tests.train.test_dpo import dpo_recipe
from tests.train.test_packing import build_trainer, token_nll
from tune import recipe as recipe_io
from tune.train import lm_head
from tune.train.dpo import train as dpo_train


def plain(hidden, weight, bias, targets):
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    log_softmax = logits.log_softmax(-1)
    return log_softmax.gather(1, targets[:, None])[:, 0], -(log_softmax.exp() * log_softmax).sum(-1), logits


@pytest.mark.parametrize("with_bias", [False, True])
def test_log_probs_entropy_and_gradient_equal_full_logits(with_bias, monkeypatch):
    monkeypatch.setattr(lm_head, "TILE_BYTES", 3 * 97 * 4 * 2)  # 3 positions a tile: several tiles and a ragged last one
    torch.manual_seed(0)
    hidden = torch.randn(10, 16, requires_grad=True)
    weight, targets = torch.randn(97, 16), torch.randint(0, 97, (10,))
    bias = torch.randn(97) if with_bias else None
    upstream = torch.randn(10)  # any per-position weighting of the loss, not only a mean

    want, want_entropy, logits = plain(hidden, weight, bias, targets)
    (want * upstream).sum().backward()
    want_grad, hidden.grad = hidden.grad, None
    got, entropy, mean_logits, is_top1 = lm_head.CompactLogProb.apply(hidden, weight, bias, targets)
    (got * upstream).sum().backward()

    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert torch.allclose(hidden.grad, want_grad, atol=1e-5, rtol=0)
    assert torch.allclose(entropy, want_entropy, atol=1e-5, rtol=0)
    assert torch.allclose(mean_logits, logits.mean(-1), atol=1e-5, rtol=0)
    assert is_top1.tolist() == (logits.argmax(-1) == targets).tolist()
    assert not entropy.requires_grad  # metrics only, as TRL's SFT and DPO use them


def test_a_trained_or_scaled_head_keeps_trls_kernel(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.get_output_embeddings().weight.requires_grad_(False)
    assert lm_head.supports(model)
    model.config.final_logit_softcapping = 30.0
    assert not lm_head.supports(model)
    model.config.final_logit_softcapping = None
    model.get_output_embeddings().weight.requires_grad_(True)
    assert not lm_head.supports(model)


@pytest.mark.parametrize("packing", [True, False])
def test_sft_loss_and_lora_gradients_equal_the_plain_loss(packing, tiny_model, tmp_path, monkeypatch):
    calls = []
    apply = lm_head.CompactLogProb.apply
    monkeypatch.setattr(lm_head.CompactLogProb, "apply", lambda *a: calls.append(a[0].shape[0]) or apply(*a))
    trainer, _ = build_trainer(tmp_path, monkeypatch, data={"packing": packing}, batch_size=4)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    lora = [p for name, p in model.named_parameters() if "lora_B" in name]
    with torch.no_grad():
        for p in lora:  # LoRA B starts at zero; give the adapter an effect so its gradients are not trivial
            p.normal_(0, 0.05)

    loss = trainer.compute_loss(model, dict(batch))
    grads = torch.autograd.grad(loss, lora)
    labels = batch["labels"]
    assert calls == [int((labels[:, 1:] != -100).sum())], "only the positions that carry loss were projected"

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    nll, mask = token_nll(model(**inputs, use_cache=False).logits, labels)
    want = nll.sum() / mask.sum()
    want_grads = torch.autograd.grad(want, lora)
    assert abs(loss.item() - want.item()) < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(grads, want_grads)) < 1e-5
    assert (labels == -100).sum() > 0 and mask.sum() < mask.numel(), "prompt positions were left out"


def test_dpo_loss_and_gradients_equal_trls_fused_head(tiny_model, tmp_path, monkeypatch):
    calls = []
    apply = lm_head.CompactLogProb.apply
    monkeypatch.setattr(lm_head.CompactLogProb, "apply", lambda *a: calls.append(a[0].shape[0]) or apply(*a))

    def build(folder, compact: bool):
        seen = {}
        monkeypatch.setattr(DPOTrainer, "train", lambda self, resume_from_checkpoint=None: seen.setdefault("t", self))
        if not compact:
            monkeypatch.setattr(lm_head, "compact_lm_head", lambda model: None)
        folder.mkdir()
        path = dpo_recipe(folder / "r.yaml", model={"dtype": "float32"}, train={"batch_size": 4},
                          output={"dir": str(folder / "out")})
        dpo_train(recipe_io.load(path), path, echo=lambda line: None)
        trainer = seen["t"]
        trainer.model.eval()
        lora = [p for name, p in trainer.model.named_parameters() if "lora_B" in name and p.requires_grad]
        with torch.no_grad():
            torch.manual_seed(3)
            for p in lora:
                p.normal_(0, 0.05)
        batch = next(iter(trainer.get_train_dataloader()))
        loss = trainer.compute_loss(trainer.model, batch)
        return loss, torch.autograd.grad(loss, lora)

    loss, grads = build(tmp_path / "a", compact=True)
    assert len(calls) == 2, "the policy and the reference (adapter off) went through the compact head"
    want, want_grads = build(tmp_path / "b", compact=False)
    assert abs(loss.item() - want.item()) < 1e-5 and abs(loss.item() - 0.6931) > 1e-3  # not the trivial start
    assert max((a - b).abs().max().item() for a, b in zip(grads, want_grads)) < 1e-5
