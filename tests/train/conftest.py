"""The DDP run that test_ddp.py checks and test_fsdp.py compares FSDP with: made once per session."""

import subprocess

import pytest

from tests.train.processes import QUICKSTART, sets, tune_cmd


@pytest.fixture(scope="session")
def ddp_run(tiny_model, tmp_path_factory):
    """`tune run --nproc 2` with 4 examples per device: a global batch of 8 (test_fsdp.py compares with it too)."""
    out = tmp_path_factory.mktemp("ddp") / "out"
    result = subprocess.run(tune_cmd("run", QUICKSTART, "--nproc", 2, *sets(f"output.dir={out}", "train.batch_size=4")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out, result
