"""The shared skeleton (tune/train/run.py, arguments.py) holds for every method alike. Each test below
once failed for one method while its copy of the skeleton had drifted: classify resumed from a pickled
checkpoint, chose paged 8-bit AdamW under sharding, and trained float32 where SFT used bf16 autocast."""

import pickle

import pytest

from tests.conftest import REPO, write_recipe
from tests.train.test_classify import write_rows
from tests.train.test_resume import Planted
from tune import recipe as recipe_io
from tune.errors import TrainingError
from tune.train import arguments
from tune.train.checkpoints import write_manifest
from tune.train.methods import METHODS

DATA = {
    "sft": {},
    "dpo": {"train": str(REPO / "data_templates" / "preference.jsonl"), "format": "preference"},
    "classify": {"format": "classification", "max_length": 32},
    "grpo": {"train": str(REPO / "data_templates" / "prompts.jsonl"), "format": "prompt"},
    "reward": {"train": str(REPO / "data_templates" / "preference.jsonl"), "format": "preference"},
    "orpo": {"train": str(REPO / "data_templates" / "preference.jsonl"), "format": "preference"},
    "kto": {"train": str(REPO / "data_templates" / "unpaired.jsonl"), "format": "unpaired"},
}
GRPO = {"reward": {"functions": [{"function": "max_words", "limit": 4}]},
        "grpo": {"num_generations": 4, "max_completion_length": 8}}


def method_recipe(method, tmp_path, **train):
    data = dict(DATA[method])
    if method == "classify":
        data["train"] = str(write_rows(tmp_path / "rows.jsonl", 32, 0))
    return write_recipe(tmp_path / "r.yaml", model={"dtype": "auto"}, data=data,
                        train={"method": method, "max_steps": 4, "save_steps": 2, "batch_size": 4, **train},
                        **(GRPO if method == "grpo" else {}))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_autocasts_bf16_on_such_a_cpu_and_refuses_a_pickled_checkpoint(method, tiny_model, tmp_path,
                                                                                   monkeypatch):
    import torch

    from tune.models import load

    monkeypatch.setattr(arguments, "cpu_has_bf16", lambda: True)  # as on this machine (AVX512-BF16); CI may differ
    monkeypatch.setattr(load, "cpu_has_bf16", lambda: True)
    path = method_recipe(method, tmp_path)
    result = METHODS[method](recipe_io.load(path), path, echo=lambda line: None)
    assert result.summary["method"] == method and result.summary["precision"] == "bf16-autocast"
    trained = {p.dtype for p in result.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in result.model.parameters() if not p.requires_grad}
    assert trained == {torch.float32}  # the optimizer updates float32 adapters
    # causal LMs keep the frozen base in bf16 (autocast saw it in bf16 anyway); classifiers load as before
    assert frozen == ({torch.float32} if method in ("classify", "reward") else {torch.bfloat16})
    assert result.summary["last_loss"] == result.summary["last_loss"]  # finite under autocast, not NaN

    out = tmp_path / "out"  # now made to look as if the run died after its last checkpoint, then tampered with
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json"):
        (out / name).unlink()
    checkpoint = out / "checkpoints" / "checkpoint-4"
    marker = tmp_path / "pwned"
    (checkpoint / "rng_state.pth").write_bytes(pickle.dumps({"python": Planted(marker)}))
    write_manifest(checkpoint, 4)  # an attacker who can write files can rewrite the manifest too
    with pytest.raises(TrainingError) as caught:
        METHODS[method](recipe_io.load(path), path, echo=lambda line: None)  # re-run: resumes implicitly
    assert caught.value.problems[0].startswith(f"{checkpoint}: refused to load a checkpoint file that holds "
                                               "more than tensors")
    assert not marker.exists()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_auto_optimizer_leaves_sharded_optimizer_states_to_fsdp_and_zero3(method, tmp_path):
    path = method_recipe(method, tmp_path, optimizer="auto")
    recipe = recipe_io.load(path, ["model.quantization=nf4"])
    assert arguments.optimizer(recipe, on_gpu=True, sharded=False) == "paged_adamw_8bit"
    assert arguments.optimizer(recipe, on_gpu=True, sharded=True) == "adamw_torch"
    assert arguments.optimizer(recipe, on_gpu=False, sharded=False) == "adamw_torch"


def test_float32_and_cpus_without_bf16_train_in_float32(tiny_model, tmp_path, monkeypatch):
    import torch

    recipe = recipe_io.load(method_recipe("sft", tmp_path))
    assert arguments.mixed_precision(recipe, torch.bfloat16, on_gpu=True) == "bf16"
    assert arguments.mixed_precision(recipe, torch.float16, on_gpu=True) == "fp16"
    monkeypatch.setattr(arguments, "cpu_has_bf16", lambda: False)
    assert arguments.mixed_precision(recipe, torch.float32, on_gpu=False) == "float32"
    monkeypatch.setattr(arguments, "cpu_has_bf16", lambda: True)
    pinned = recipe_io.load(method_recipe("sft", tmp_path), ["model.dtype=float32"])
    assert arguments.mixed_precision(pinned, torch.float32, on_gpu=False) == "float32"  # the user asked
