"""LoRA, DoRA and QLoRA SFT runs on the tiny model: the loss falls, only adapter weights move, and the
saved adapter is a plain PEFT adapter that changes the model's output."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_recipe
from tune import recipe as recipe_io
from tune.errors import TuneError
from tune.train.sft import train

# r=8 on all linear layers of 2 layers (hidden 64, kv 32, mlp 192): sum of r*(in+out) per layer.
LORA_PARAMS = 2 * 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 192) * 2 + (192 + 64))
DORA_MAGNITUDES = 2 * (64 + 32 + 32 + 64 + 192 + 192 + 64)

CASES = {
    "lora": ({"method": "lora"}, {}, LORA_PARAMS),
    "dora": ({"method": "dora"}, {}, LORA_PARAMS + DORA_MAGNITUDES),
    "rslora": ({"method": "rslora"}, {}, LORA_PARAMS),
    "qlora": ({"method": "lora"}, {"quantization": "nf4"}, LORA_PARAMS),
}


def base_logits(model_dir, ids, quantization="none"):
    from tune.models.load import load_model
    from tune.recipe import ModelSection

    model = load_model(ModelSection(name=str(model_dir), dtype="float32", quantization=quantization), str(model_dir))
    with torch.no_grad():
        return model(ids).logits, model


@pytest.mark.parametrize("case", list(CASES))
def test_sft_trains_only_the_adapter(case, tiny_model, tmp_path):
    adapter, model_keys, expected_trainable = CASES[case]
    path = write_recipe(tmp_path / "r.yaml", adapter=adapter, model=model_keys, data={"eval_fraction": 0.1})
    result = train(recipe_io.load(path), path, echo=lambda line: None)
    summary, trained = result.summary, result.model
    out = tmp_path / "out"

    assert summary["last_loss"] < summary["first_loss"]
    assert summary["trainable_parameters"] == expected_trainable

    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved if "magnitude" not in key)
    assert all(saved[key].abs().sum() > 0 for key in saved if "lora_B" in key)  # B starts at zero

    original = load_file(tiny_model / "model.safetensors")
    base_state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in trained.state_dict().items() if "lora_" not in k}
    ids = torch.tensor([[5, 9, 40, 41, 77, 3]])
    if model_keys.get("quantization"):
        _, fresh = base_logits(tiny_model, ids, "nf4")
        fresh_state = fresh.state_dict()
        for key, value in fresh_state.items():
            if key.endswith("q_proj.weight"):
                assert torch.equal(base_state[key], value), key  # packed 4-bit data untouched
    else:
        for key, value in original.items():
            assert torch.equal(base_state[key], value), key

    from peft import PeftModel

    reference, base = base_logits(tiny_model, ids)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        adapted = reloaded(ids).logits
    assert (adapted - reference).abs().max() > 1e-3
    if not model_keys.get("quantization"):
        trained.eval()
        with torch.no_grad():
            assert torch.allclose(trained(ids).logits, adapted, atol=1e-5)


def test_output_dir_holds_the_documented_files(tiny_model, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", data={"eval_fraction": 0.2}, train={"max_steps": 4, "eval_steps": 2})
    train(recipe_io.load(path), path, echo=lambda line: None)
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "recipe.yaml", "versions.json", "data_fingerprint.json", "metrics.jsonl",
            "run.json"} <= names
    assert not [name for name in names if name.startswith(".")]  # no staging or scratch left behind

    resolved = recipe_io.load(out / "recipe.yaml")
    assert resolved.adapter.alpha == 16 and resolved.train.max_steps == 4
    versions = json.loads((out / "versions.json").read_text())
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"].startswith("2.")
    assert {"transformers", "peft", "trl"} <= versions.keys()
    fingerprint = json.loads((out / "data_fingerprint.json").read_text())
    assert fingerprint["sources"][0]["rows"] == 164 and len(fingerprint["sources"][0]["sha256"]) == 64
    assert fingerprint["train_examples"] + fingerprint["eval_examples"] == 164
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    assert all("learning_rate" in r for r in records if "loss" in r)


def test_refuses_a_non_empty_output_dir(tiny_model, tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(TuneError) as caught:
        train(recipe_io.load(path), path, echo=lambda line: None)
    assert caught.value.problems == [f"output.dir: {tmp_path / 'out'} is not empty; choose another with "
                                     "--set output.dir=... or pass --overwrite"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
