"""train.use_liger_kernel: auto turns Liger on only for SFT on a CUDA GPU with liger-kernel installed."""

import importlib.util

import pytest
import torch

from tune.recipe import TrainSection
from tune.train.callbacks import liger_kernel


@pytest.mark.parametrize("gpu, installed, method, expected", [
    (True, True, "sft", True),
    (False, True, "sft", False),   # Triton kernels need CUDA
    (True, False, "sft", False),   # not installed: auto quietly stays off (explicit true is an error)
    (True, True, "dpo", False),    # Liger's DPO and classification paths were not measured
    (True, True, "classify", False),
])
def test_auto_resolves_by_hardware_package_and_method(monkeypatch, gpu, installed, method, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "liger_kernel" else real(name, *a))
    assert liger_kernel(TrainSection(), method) is expected
    assert liger_kernel(TrainSection(use_liger_kernel=False), method) is False
    assert liger_kernel(TrainSection(use_liger_kernel=True), method) is True


def test_a_cpu_run_hands_freed_heap_back_after_every_forward_and_backward(tiny_model, tmp_path, monkeypatch):
    from tests.conftest import write_recipe
    from tune import recipe as recipe_io
    from tune.train import callbacks
    from tune.train.sft import train

    if not callbacks.ReturnFreedMemory.available():
        pytest.skip("no glibc malloc_trim here")
    trims = []
    monkeypatch.setattr(callbacks.ReturnFreedMemory, "__init__", lambda self: setattr(self, "trim", trims.append))
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 3, "gradient_accumulation": 2})
    train(recipe_io.load(path), path, echo=lambda line: None)
    assert len(trims) == 3 * 2  # after every micro-batch: on_substep_end, and on_step_end for the last of a step
