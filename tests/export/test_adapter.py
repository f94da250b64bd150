"""--format adapter: a clean PEFT dir that plain PEFT reloads to the same logits, with a serving report."""

import json

import pytest
import torch

from tune.export import adapter as adapter_export
from tune.export import pipeline


def test_exported_adapter_reloads_with_plain_peft(trained, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = trained("lora")
    out = tmp_path / "adapter"
    report = pipeline.export(source, out, "adapter", echo=lambda line: None)
    assert report["verification"][0]["max_abs_logit_diff"] == 0.0
    names = {path.name for path in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
            "recipe.yaml", "run.json", "README.md", "serving_compatibility.json"} <= names
    assert not any(path.is_dir() for path in out.iterdir())  # no checkpoints or staging dirs

    ids = torch.tensor([[1, 5, 9, 40, 41, 77, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
        want = PeftModel.from_pretrained(base, source).eval()(ids).logits
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, out).eval()(ids).logits
    assert torch.equal(got, want) and (got - plain).abs().max() > 1e-2
    serving = json.loads((out / "serving_compatibility.json").read_text())
    assert serving == {"rank": 8, "max_lora_rank": 8, "target_modules": ["down_proj", "gate_proj", "k_proj",
                       "o_proj", "q_proj", "up_proj", "v_proj"], "warnings": [], "vllm_ok": True}


@pytest.mark.parametrize("config,warning", [
    ({"r": 12}, None),
    ({"r": 1024}, "rank 1024 is above vLLM's largest --max-lora-rank (512)"),
    ({"r": 8, "use_dora": True}, "DoRA adapters are not served by vLLM, TGI or LoRAX"),
    ({"r": 8, "modules_to_save": ["score"]}, "modules_to_save ['score'] (whole trained layers)"),
    ({"r": 8, "target_modules": ["q_proj", "c_attn"]}, "target modules ['c_attn'] are not LoRA-capable"),
])
def test_compatibility_report(config, warning):
    report = adapter_export.compatibility({"target_modules": ["q_proj"], **config})
    if warning is None:
        assert report["warnings"] == [] and report["max_lora_rank"] == 16  # rank 12 is served padded to 16
    else:
        assert len(report["warnings"]) == 1 and report["warnings"][0].startswith(warning)
        assert not report["vllm_ok"]


def test_dora_adapter_export_warns_and_its_card_says_peft(trained, tmp_path):
    import yaml

    lines = []
    pipeline.export(trained("dora"), tmp_path / "a", "adapter", verify=False, echo=lines.append)
    assert lines[0].startswith("warning: DoRA adapters are not served by vLLM") and lines[-1] == "verify: skipped (--no-verify)"
    card = (tmp_path / "a" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["tags"][:3] == ["tune", "dora", "sft"]
    assert "## Recipe" in card and "## Training result" in card and "AutoPeftModelForCausalLM" in card
