"""The adapter variants on the tiny model: what each trains is what it says, PiSSA/OLoRA are saved as a
plain LoRA that reproduces the trained model on the original base, EVA and LoRA+ change what they should,
and what cannot combine is one line at validate."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ctrl_c_at, write_recipe
from tests.test_recipe import VALID, problems
from tune import recipe as recipe_io
from tune.errors import TuneError
from tune.train.sft import train

IDS = torch.tensor([[5, 9, 40, 41, 77, 3]])
QUIET = dict(echo=lambda line: None)


def run(tmp_path, adapter: dict, **sections):
    tmp_path.mkdir(exist_ok=True)
    sections.setdefault("train", {}).setdefault("max_steps", 6)
    path = write_recipe(tmp_path / "r.yaml", adapter={"r": 8, "dropout": 0.0, **adapter}, **sections)
    return train(recipe_io.load(path), path, **QUIET), tmp_path / "out"


def plain_peft_logits(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        before = base(IDS).logits
        after = PeftModel.from_pretrained(base, adapter_dir).eval()(IDS).logits
    return before, after


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_save_a_plain_lora_equal_to_the_trained_model(init, tiny_model, tmp_path):
    result, out = run(tmp_path, {"init": init})
    assert result.summary["last_loss"] < result.summary["first_loss"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32 and config["init_lora_weights"] is True

    # The run trained on a base with its principal directions moved into the adapter; the saved adapter on
    # the original, untouched base must give the same model.
    result.model.eval()
    with torch.no_grad():
        trained = result.model(IDS).logits
    before, after = plain_peft_logits(tiny_model, out)
    assert (after - before).abs().max() > 1e-3
    assert torch.allclose(after, trained, atol=1e-4), (after - trained).abs().max()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the scratch snapshot is gone


def test_pissa_starts_from_the_base_s_principal_directions(tiny_model, tmp_path):
    _, out = run(tmp_path, {"init": "pissa"}, train={"max_steps": 1, "learning_rate": 1e-12})
    saved = load_file(out / "adapter_model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    key = "model.layers.0.mlp.down_proj"
    # Saved as [A; A0] and [B, -B0]: the trained half (unmoved at this learning rate) beside the start.
    a, b = saved[f"base_model.model.{key}.lora_A.weight"], saved[f"base_model.model.{key}.lora_B.weight"]
    start_a, start_b = a[8:], -b[:, 8:]
    assert torch.allclose(a[:8], start_a) and torch.allclose(b[:, :8], start_b)
    # B0 @ A0 times the scale (alpha / r = 2) holds the base's 8 largest singular values (PiSSA's start; by
    # PEFT's 16-iteration fast SVD, within 5% on this random matrix's flat spectrum).
    top = torch.linalg.svdvals(base[f"{key}.weight"])[:8]
    assert torch.allclose(torch.linalg.svdvals(2.0 * start_b @ start_a)[:8], top, rtol=0.05)
    assert start_b.abs().sum() > 0  # unlike the default start, B is not zero


def test_eva_initializes_from_the_training_rows(tiny_model, tmp_path):
    lines = []
    path = write_recipe(tmp_path / "r.yaml", adapter={"r": 8, "dropout": 0.0, "init": "eva"}, train={"max_steps": 2})
    result = train(recipe_io.load(path), path, echo=lines.append)
    assert "adapter: EVA initialization from the training rows' activations" in lines
    assert "init eva" in next(line for line in lines if line.startswith("model: "))
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["rank_pattern"]  # the ranks EVA chose travel with the adapter, for plain PEFT to load
    # EVA redistributes the rank budget (8 per layer on average) by the explained variance of each layer.
    ranks = {name: module.r["default"] for name, module in result.model.named_modules() if hasattr(module, "r")
             and isinstance(getattr(module, "r"), dict) and "default" in module.r}
    assert sum(ranks.values()) <= 8 * len(ranks) and len(set(ranks.values())) > 1
    before, after = plain_peft_logits(tiny_model, tmp_path / "out")
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(after, result.model(IDS).logits, atol=1e-5)


def test_lora_plus_gives_b_its_own_learning_rate(tiny_model, tmp_path, monkeypatch):
    from tune.train import adapter_variants

    built = []
    original = adapter_variants._lora_plus_optimizer
    monkeypatch.setattr(adapter_variants, "_lora_plus_optimizer", lambda *a: built.append(original(*a)) or built[-1])
    run(tmp_path, {"lora_plus_ratio": 16}, train={"max_steps": 2, "learning_rate": 1e-3, "lr_scheduler": "constant",
                                                  "warmup_ratio": 0.0})
    groups = built[0].param_groups
    by_lr = {round(group["lr"], 9): len(group["params"]) for group in groups if group["params"]}
    assert by_lr == {1e-3: 14, 1.6e-2: 14}  # 7 adapted linears in each of 2 blocks: all A at lr, all B at 16 lr


def test_rank_pattern_alpha_pattern_and_layers_reach_peft(tiny_model, tmp_path):
    result, out = run(tmp_path, {"rank_pattern": {"mlp.down_proj": 4}, "alpha_pattern": {"q_proj": 64},
                                 "layers": [1]}, train={"max_steps": 1})
    adapted = {name.removeprefix("base_model.model."): module for name, module in result.model.named_modules()
               if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})}
    assert sorted({name.split(".")[2] for name in adapted}) == ["1"]  # block 0 has none
    assert adapted["model.layers.1.mlp.down_proj"].r["default"] == 4
    assert adapted["model.layers.1.mlp.up_proj"].r["default"] == 8
    assert adapted["model.layers.1.self_attn.q_proj"].scaling["default"] == 64 / 8
    saved = load_file(out / "adapter_model.safetensors")
    assert not [key for key in saved if ".layers.0." in key]


def test_a_pattern_or_layer_that_matches_nothing_stops_the_run(tiny_model, tmp_path):
    with pytest.raises(TuneError, match=r"^adapter.rank_pattern: 'mlp.down' matches none of the adapted layers "
                                        r"\(named like model.layers.0.self_attn.q_proj\)"):
        run(tmp_path, {"rank_pattern": {"mlp.down": 4}})
    with pytest.raises(TuneError, match=r"^adapter.layers: 2 is past the model's last block \(2 blocks, numbered 0 to 1\)$"):
        run(tmp_path, {"layers": [0, 2]}, output={"overwrite": True})


def test_neftune_noises_the_embeddings_while_training(tiny_model, tmp_path):
    plain, _ = run(tmp_path / "plain", {}, train={"max_steps": 1})
    noisy, _ = run(tmp_path / "noisy", {}, train={"max_steps": 1, "neftune_alpha": 5.0})
    assert noisy.summary["first_loss"] != plain.summary["first_loss"]
    noisy.model.eval()  # the noise is for training only: at inference the same weights give the same output
    with torch.no_grad():
        assert torch.equal(noisy.model(IDS).logits, noisy.model(IDS).logits)


@pytest.mark.parametrize("keys, line", [
    ("adapter: {init: pissa}\nmodel: {name: tiny-llama, quantization: nf4}",
     "adapter.init: pissa rewrites the base weights it starts from, which a nf4 base cannot hold; set "
     "model.quantization: none, or adapter.init: default for QLoRA"),
    ("adapter: {init: olora, method: dora}",
     "adapter.init: olora is saved as a plain LoRA (PEFT's conversion), which DoRA's magnitudes are not; use "
     "adapter.method: lora or rslora"),
    ("adapter: {init: pissa}\ntrain: {method: dpo}\ndata: {train: data.jsonl, format: preference}",
     "adapter.init: pissa moves the base's top directions into the adapter, so the model with the adapter switched "
     "off (dpo's reference) is no longer the base; use adapter.init: default for dpo"),
    ("adapter: {init: corda}\ntrain: {method: grpo}\ndata: {train: data.jsonl, format: prompt}\n"
     "reward: {functions: [json_valid]}\ngrpo: {beta: 0.0}",
     "adapter.init: corda is calibrated on the activations of rows SFT prepares (train.method: sft); use pissa or "
     "olora for grpo"),
    ("adapter: {init: orthogonal, r: 7}",
     "adapter.init: orthogonal pairs the rank's directions; use an even adapter.r (and even rank_pattern ranks)"),
    ("train: {neftune_alpha: 5, method: classify}\ndata: {train: data.jsonl, format: classification}",
     None),
    ("adapter: {lora_plus_ratio: 16}\ndistributed: {strategy: fsdp}",
     "adapter.lora_plus_ratio: builds its own optimizer groups, which fsdp replaces with its own; use ddp or leave it out"),
    ("adapter: {layers: []}", "adapter.layers: name at least one block, by its index from 0 (or leave layers out for all)"),
    ("adapter: {init: olora}\ndata: {train: data.jsonl, replay: 1.0, replay_loss: distribution}",
     "adapter.init: olora moves the base's top directions into the adapter, so the model with the adapter switched "
     "off (data.replay_loss: distribution's teacher) is no longer the base; set data.replay_loss: tokens"),
    ("data: {train: data.jsonl, replay: 1.0, replay_loss: distribution, packing: true}",
     "data.replay_loss: distribution marks the replay rows token by token, which TRL's packing drops; set "
     "data.packing: false or data.replay_loss: tokens"),
])
def test_variants_that_cannot_combine_are_one_line_at_validate(keys, line, tmp_path):
    text = VALID.replace("train:\n  max_steps: 5\n", "") + keys + "\n"
    if "train:" not in keys:
        text += "train: {max_steps: 5}\n"
    found = problems(tmp_path, text)
    assert len(found) == 1
    if line is None:  # the classify case: its own line names the method
        assert found[0].endswith("train.neftune_alpha: NEFTune adds noise to instruction tuning's embeddings "
                                 "(train.method: sft), not classify")
    else:
        assert found[0].endswith(line), found


def test_a_resumed_pissa_run_saves_the_same_adapter(tiny_model, tmp_path, monkeypatch):
    """The decomposition is redone on resume (seeded) before the checkpoint loads: a run stopped after its
    step-2 checkpoint and resumed converts against the same start as one that never stopped."""
    from trl import SFTTrainer

    from tune.errors import Interrupted

    keys = dict(train={"max_steps": 4, "save_steps": 2, "batch_size": 4})
    _, straight = run(tmp_path / "straight", {"init": "pissa"}, **keys)
    restore = ctrl_c_at(monkeypatch, SFTTrainer, 3)
    with pytest.raises(Interrupted):
        run(tmp_path / "stopped", {"init": "pissa"}, **keys)
    restore()
    recipe = tmp_path / "stopped" / "r.yaml"
    resumed = train(recipe_io.load(recipe), recipe, resume=True, **QUIET)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")
    one, other = load_file(straight / "adapter_model.safetensors"), load_file(tmp_path / "stopped" / "out" / "adapter_model.safetensors")
    assert one.keys() == other.keys() and all(torch.allclose(one[k], other[k], atol=1e-6) for k in one)


@pytest.mark.parametrize("method", ["kpm", "ipm"])
def test_corda_calibrates_then_saves_a_plain_lora_equal_to_the_trained_model(method, tiny_model, tmp_path):
    lines = []
    path = write_recipe(tmp_path / "r.yaml", adapter={"r": 8, "dropout": 0.0, "init": "corda", "corda_method": method},
                        train={"max_steps": 6})
    result = train(recipe_io.load(path), path, echo=lines.append)
    what = "general prompts" if method == "kpm" else "training rows"
    assert any(line.startswith(f"adapter: CorDA ({method}) calibration on ") and line.endswith(what) for line in lines)
    assert result.summary["last_loss"] < result.summary["first_loss"]
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["init_lora_weights"] is True  # converted: twice the rank, a plain start
    result.model.eval()
    with torch.no_grad():
        trained = result.model(IDS).logits
    before, after = plain_peft_logits(tiny_model, tmp_path / "out")
    assert (after - before).abs().max() > 1e-3
    assert torch.allclose(after, trained, atol=1e-4), (after - trained).abs().max()
