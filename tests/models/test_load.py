"""A CPU run under bf16 autocast keeps its frozen base in bf16 and feeds adapter layers their input as
it is: the same numbers as PEFT's cast-to-float32-and-back, with fewer tensors kept for backward."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tune.models import load
from tune.recipe import ModelSection


@pytest.mark.parametrize("dtype, quantization, has_bf16, expected", [
    ("auto", "none", True, torch.bfloat16),
    ("auto", "none", False, None),  # no AVX512-BF16: float32, no autocast
    ("auto", "nf4", True, None),  # a quantized base keeps its compute dtype
    ("float32", "none", True, None),  # the user asked
])
def test_frozen_base_dtype_on_a_cpu(dtype, quantization, has_bf16, expected, monkeypatch):
    monkeypatch.setattr(load, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load.frozen_cpu_dtype(ModelSection(name="m", dtype=dtype, quantization=quantization)) is expected


def saved_bytes(model, ids) -> tuple[torch.Tensor, int]:
    """The logits of a forward pass and the bytes of the distinct tensors autograd keeps for backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params:
            kept[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids).logits
    return logits.detach(), sum(kept.values())


def test_adapter_inputs_skip_the_float32_round_trip_under_autocast(tiny_model):
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)  # an adapter with an effect
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    before, kept_before = saved_bytes(model, ids)
    with torch.no_grad():
        plain_before = model(ids).logits  # outside autocast PEFT's cast makes the float32 adapter work

    load.autocast_adapter_inputs(model)
    after, kept_after = saved_bytes(model, ids)
    assert torch.equal(after, before)  # bf16 -> float32 -> bf16 is exact: nothing but the copies changed
    assert kept_after < kept_before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain_before)


def test_adapter_layers_become_an_exclusion_of_the_other_blocks():
    import re

    from tune.models.load import other_blocks

    pattern = other_blocks([3, 1])
    excluded = {name: bool(re.fullmatch(pattern, name)) for name in (
        "model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj", "model.layers.10.self_attn.q_proj",
        "model.layers.3.self_attn.o_proj", "transformer.h.2.attn.c_attn", "encoder.layer.1.attention.self.query",
        "model.fch.0.proj", "lm_head")}
    assert excluded == {"model.layers.0.mlp.up_proj": True, "model.layers.1.mlp.up_proj": False,
                        "model.layers.10.self_attn.q_proj": True, "model.layers.3.self_attn.o_proj": False,
                        "transformer.h.2.attn.c_attn": True, "encoder.layer.1.attention.self.query": False,
                        "model.fch.0.proj": False, "lm_head": False}
    assert other_blocks(None) is None
