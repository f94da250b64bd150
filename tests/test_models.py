"""Loading a 4-bit base for training: which weights stay in the compute dtype."""

from tune.models.load import load_model
from tune.recipe import ModelSection


def _dtypes(model):
    import torch

    unquantized = {name: p.dtype for name, p in model.named_parameters() if p.__class__.__name__ != "Params4bit"}
    return unquantized, any(p.requires_grad for p in model.parameters()), torch


def test_a_bf16_nf4_base_keeps_its_unquantized_weights_in_bf16(tiny_model):
    # PEFT's k-bit preparation would make them float32, and with them the whole residual stream: on an
    # H100 that tripled a 1B QLoRA run's activation memory (bench/results/h100-1b-run1.json).
    model = load_model(ModelSection(name=str(tiny_model), dtype="bfloat16", quantization="nf4"), str(tiny_model),
                       gradient_checkpointing=True)
    dtypes, trainable, torch = _dtypes(model)
    assert set(dtypes.values()) == {torch.bfloat16}
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= dtypes.keys()
    assert not trainable  # frozen, as PEFT's preparation leaves them
    hidden = model.get_input_embeddings()(torch.tensor([[1, 2]]))
    assert hidden.requires_grad  # checkpointed layers still get an input that carries gradients


def test_a_float16_nf4_base_gets_peft_float32_upcast(tiny_model):
    model = load_model(ModelSection(name=str(tiny_model), dtype="float16", quantization="nf4"), str(tiny_model))
    dtypes, trainable, torch = _dtypes(model)
    assert set(dtypes.values()) == {torch.float32}  # float16's narrow range is why PEFT upcasts
    assert not trainable
