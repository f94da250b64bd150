"""A tiny random Qwen3-MoE (4 experts, 2 per token, fused 3-D expert tensors as transformers 5 stores them):
LoRA under all-linear reaches the experts and leaves the router alone unless adapter.target_router asks,
the run says what it covers, adapter.layers reaches expert tensors too, and the streamed merge applies the
expert adapters exactly in the checkpoint's own layout (per expert, or fused)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_recipe
from tune import recipe as recipe_io
from tune.train.sft import train

IDS = torch.tensor([[5, 9, 40, 41, 77, 3]])


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from tune.models.tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-qwen3-moe")
    tokenizer = build_tokenizer(1024)
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                            num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    Qwen3MoeForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def moe_run(tmp_path, tiny_moe, **adapter):
    lines = []
    path = write_recipe(tmp_path / "r.yaml", model={"name": str(tiny_moe)}, adapter={"r": 4, **adapter},
                        train={"max_steps": 6, "learning_rate": 1e-2})
    result = train(recipe_io.load(path), path, echo=lines.append)
    return result, lines, tmp_path / "out"


def test_all_linear_reaches_the_experts_and_not_the_router(tiny_moe, tmp_path):
    result, lines, out = moe_run(tmp_path, tiny_moe)
    assert result.summary["last_loss"] < result.summary["first_loss"]
    assert ("adapter: covers attention 8, experts 2; the router is left out (adapter.target_router: true adds it)"
            in lines)
    saved = load_file(out / "adapter_model.safetensors")
    assert any(".mlp.experts." in key for key in saved) and not any(".mlp.gate." in key for key in saved)
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]
    base = load_file(tiny_moe / "model.safetensors")
    trained = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in result.model.state_dict().items()}
    router = "model.layers.0.mlp.gate.weight"
    assert torch.equal(trained[router], base[router])  # the routing is as pretrained


def test_target_router_adapts_it(tiny_moe, tmp_path):
    _, lines, out = moe_run(tmp_path, tiny_moe, target_router=True)
    assert "adapter: covers attention 8, experts 2, router 2" in lines
    config = json.loads((out / "adapter_config.json").read_text())
    assert "gate.weight" in config["target_parameters"]


def test_layers_reach_the_expert_tensors_of_the_chosen_blocks_only(tiny_moe, tmp_path):
    _, lines, out = moe_run(tmp_path, tiny_moe, layers=[1])
    assert "adapter: covers attention 4, experts 1; the router is left out (adapter.target_router: true adds it)" in lines
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and not [key for key in saved if ".layers.0." in key]


def merged_logits(folder):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(IDS).logits


@pytest.mark.parametrize("adapter", [{}, {"target_router": True}], ids=["experts", "experts+router"])
def test_streamed_merge_applies_the_expert_adapters_exactly(tiny_moe, tmp_path, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tune.export import pipeline

    _, _, out = moe_run(tmp_path, tiny_moe, **adapter)
    report = pipeline.merge(out, tmp_path / "merged", echo=lambda line: None)
    # 8 attention weights, then per layer 4 experts x gate/up/down (and the router) on disk
    assert (report["method"], report["merged_weights"]) == ("streamed", 8 + 2 * (12 + bool(adapter)))
    assert report["verification"][0]["max_abs_logit_diff"] < 1e-5
    streamed = load_file(tmp_path / "merged" / "model.safetensors")
    assert set(streamed) == set(load_file(tiny_moe / "model.safetensors"))  # the checkpoint's own layout
    pipeline.merge(out, tmp_path / "in-memory", in_memory=True, echo=lambda line: None)
    in_memory = load_file(tmp_path / "in-memory" / "model.safetensors")
    assert max((streamed[k] - in_memory[k]).abs().max().item() for k in streamed) < 1e-6
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_moe, dtype=torch.float32).eval()
        plain = base(IDS).logits
        want = PeftModel.from_pretrained(base, out).eval()(IDS).logits
    assert (want - plain).abs().max() > 1e-3  # the adapter matters, so the next check can fail
    assert (merged_logits(tmp_path / "merged") - want).abs().max() < 1e-5


def test_streamed_merge_keeps_a_checkpoint_stored_fused(tiny_moe, tmp_path):
    from transformers import AutoModelForCausalLM

    from tune.export import pipeline

    fused = tmp_path / "fused-base"
    AutoModelForCausalLM.from_pretrained(tiny_moe).save_pretrained(fused, save_original_format=False)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (fused / name).write_bytes((tiny_moe / name).read_bytes())
    assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(fused / "model.safetensors")
    _, _, out = moe_run(tmp_path, fused)
    report = pipeline.merge(out, tmp_path / "merged", echo=lambda line: None)
    assert (report["method"], report["merged_weights"]) == ("streamed", 8 + 2 * 2)
    assert report["verification"][0]["max_abs_logit_diff"] < 1e-5


def test_validate_counts_what_all_linear_will_cover(tiny_moe, tmp_path):
    from typer.testing import CliRunner

    from tune.cli import app
    from tune.models.layers import coverage_line

    path = write_recipe(tmp_path / "r.yaml", model={"name": str(tiny_moe)})
    # On disk transformers keeps one weight per expert (4 experts x gate/up/down x 2 layers).
    assert coverage_line(recipe_io.load(path)) == ("adapter: all-linear covers attention 8, experts 24 weight tensors; "
                                                   "the router is left out (adapter.target_router: true adds it)")
    routed = recipe_io.load(path, ["adapter.target_router=true"])
    assert coverage_line(routed) == "adapter: all-linear covers attention 8, experts 24, router 2 weight tensors"
    said = CliRunner().invoke(app, ["validate", str(path)], terminal_width=400)
    assert said.exit_code == 0 and "adapter: all-linear covers attention 8" in said.output
    assert "mlp.gate" not in said.output  # the router is not adapted, so no rank warning about it
