"""Merging: the merged model reproduces base+adapter (LoRA, rsLoRA, DoRA, QLoRA into the float base), the
shard-streamed merge writes the same tensors as PEFT's in-memory merge, and a merge that fails its
verification leaves nothing at OUT."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tune.errors import TuneError
from tune.export import merge as merge_module
from tune.export import pipeline
from tune.models.run_dir import read_adapter_dir
from tune.export.verify import VerificationError

IDS = [1, 5, 9, 40, 41, 77, 3, 2, 120]


def logits(model):
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0]


def base_plus_adapter(adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = read_adapter_dir(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(run.base, dtype=torch.float32)
    with torch.no_grad():
        plain = logits(base)
    return logits(PeftModel.from_pretrained(base, adapter_dir).eval()), plain


@pytest.mark.parametrize("name,method", [("lora", "streamed"), ("rslora", "streamed"), ("dora", "in-memory"),
                                         ("qlora", "streamed")])
def test_merged_logits_equal_base_plus_adapter(name, method, trained, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = trained(name)
    report = pipeline.merge(adapter, tmp_path / "merged", echo=lambda line: None)
    assert report["method"] == method
    assert report["verification"][0]["max_abs_logit_diff"] < 1e-5

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in key for key in merged.state_dict())
    want, plain = base_plus_adapter(adapter)
    got = logits(merged)
    assert (got - want).abs().max() < 1e-5
    assert (want - plain).abs().max() > 1e-2  # the adapter matters, so the check above can fail
    names = {path.name for path in (tmp_path / "merged").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "README.md", "export.json"} <= names
    assert (tmp_path / "merged" / "chat_template.jinja").read_text() == (adapter / "chat_template.jinja").read_text()


def test_streamed_merge_writes_the_tensors_of_the_in_memory_merge(trained, sharded_base, tmp_path):
    adapter = trained("lora")
    streamed = pipeline.merge(adapter, tmp_path / "s", base=str(sharded_base), shard_size="200KB", verify=False,
                              echo=lambda line: None)
    in_memory = pipeline.merge(adapter, tmp_path / "m", base=str(sharded_base), verify=False, in_memory=True,
                               echo=lambda line: None)
    assert (streamed["method"], in_memory["method"]) == ("streamed", "in-memory")
    assert len(list(sharded_base.glob("*.safetensors"))) >= 4
    shards = sorted((tmp_path / "s").glob("model-*.safetensors"))
    assert streamed["shards"] == len(shards) >= 3
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {path.name for path in shards}

    got = {}
    for path in shards:
        got.update(load_file(path))
    want = load_file(tmp_path / "m" / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.allclose(got[key], want[key], rtol=0, atol=1e-7), key
    base = {}
    for path in sharded_base.glob("*.safetensors"):
        base.update(load_file(path))
    changed = [key for key in base if not torch.equal(base[key], got[key])]
    assert len(changed) == 14 and all(key.endswith("proj.weight") for key in changed)  # 7 per layer


def test_streamed_merge_casts_to_the_asked_dtype(trained, tmp_path):
    report = pipeline.merge(trained("lora"), tmp_path / "b", dtype="bfloat16", echo=lambda line: None)
    assert report["dtype"] == "bfloat16"
    assert 0 < report["verification"][0]["max_abs_logit_diff"] < report["verification"][0]["tolerance"]
    assert {t.dtype for t in load_file(tmp_path / "b" / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "b" / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_wrong_merge_fails_verification_and_leaves_nothing(trained, tmp_path, monkeypatch):
    real = merge_module.lora_pairs

    def half_scaled(run, wrapped=frozenset()):
        return {name: (a, b, scale / 2) for name, (a, b, scale) in real(run, wrapped).items()}

    monkeypatch.setattr(merge_module, "lora_pairs", half_scaled)
    with pytest.raises(VerificationError) as caught:
        pipeline.merge(trained("lora"), tmp_path / "out", echo=lambda line: None)
    assert "FAILED" in caught.value.problems[0]
    assert list(tmp_path.iterdir()) == []  # neither OUT nor the temp dir beside it


def test_refuses_a_non_empty_out_and_bad_options(trained, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(TuneError) as caught:
        pipeline.merge(trained("lora"), tmp_path / "out", echo=lambda line: None)
    assert caught.value.problems == [f"{(tmp_path / 'out').absolute()}: is not empty; choose another OUT or pass --overwrite"]
    with pytest.raises(TuneError) as caught:
        pipeline.merge(trained("lora"), tmp_path / "new", dtype="int4", shard_size="lots", echo=lambda line: None)
    assert caught.value.problems == ["--dtype: 'int4' is not one of auto, float32, bfloat16, float16",
                                     "--shard-size: 'lots' is not a size like 2GB, 500MB or 100KB"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_parse_size():
    assert [merge_module.parse_size(text) for text in ("2GB", "500MB", "100KB", "1.5GB", "4096")] == \
        [2_000_000_000, 500_000_000, 100_000, 1_500_000_000, 4096]


@pytest.mark.parametrize("adapted,got,ok,measurable", [
    ([1.0, 0.0], [0.0, 0.0], False, True),  # the plain base: within the tolerance, but it is the base
    ([1.0, 0.0], [1.125, 0.0], True, True),  # base+adapter with rounding noise
    ([0.25, 0.0], [0.0, 0.125], True, False),  # an effect within 5x of the noise: cannot be told apart
])
def test_verification_needs_the_result_nearer_base_plus_adapter_than_the_base(adapted, got, ok, measurable):
    from tune.export.verify import Reference, compare

    ref = Reference([[1]], [torch.tensor([adapted])], [torch.tensor([[0.0, 0.0]])], adapted[0])
    check = compare("merged", [torch.tensor([got])], ref, "float32", tolerance=2.0)
    assert (check.ok, check.measurable, check.max_diff <= check.tolerance) == (ok, measurable, True)
    if not ok:
        assert check.line() == (
            "verify merged: max |logit diff| vs base+adapter 1.00e+00, vs the base 0.00e+00 (tolerance 2.0e+00; the "
            "adapter itself moves logits by up to 1.00e+00; the result must be 4x nearer base+adapter than the base) "
            "FAILED: it is nearer the base than base+adapter, as if the adapter were not merged")


def test_a_merge_that_did_nothing_fails_though_the_adapter_moves_logits_less_than_the_tolerance(
        trained, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import save_file

    light = tmp_path / "light"  # the adapter's effect scaled to ~half the float16 tolerance
    shutil.copytree(trained("lora"), light)
    weights = load_file(light / "adapter_model.safetensors")
    save_file({k: v / 200 if "lora_B" in k else v for k, v in weights.items()}, light / "adapter_model.safetensors")
    with monkeypatch.context() as patch, pytest.raises(VerificationError) as caught:
        patch.setattr(merge_module, "lora_pairs", lambda run, wrapped: {})  # the merge writes the plain base
        pipeline.merge(light, tmp_path / "out", dtype="float16", echo=lambda line: None)
    line = caught.value.problems[0]
    assert line.endswith(" FAILED: it is nearer the base than base+adapter, as if the adapter were not merged; "
                         "the merge was not written")
    assert float(line.split("vs base+adapter ")[1].split(",")[0]) < float(line.split("(tolerance ")[1].split(";")[0])
    assert not (tmp_path / "out").exists()

    report = pipeline.merge(light, tmp_path / "right", dtype="float16", echo=lambda line: None)
    check = report["verification"][0]
    assert check["adapter_measurable"] and check["ok"]
    assert check["adapter_effect"] < check["tolerance"] / 1.5
