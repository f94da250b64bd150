"""No kernel is fetched from a hub unless the user asks (USE_HUB_KERNELS=1), and importing tune's stack
prints nothing: transformers 5.25 depends on `kernels`, which bitsandbytes 0.50 asks for a CPU kernel
at import time."""

import os
import subprocess
import sys

# Counts every time `kernels` asks the hub or its cache for a kernel, then imports what tune's commands
# import and asks for the GGUF kernel transformers fetches by itself.
SPY = """
from kernels._internals import resolver
asked = []
for cls in [c for name, c in vars(resolver).items() if "Hub" in name and hasattr(c, "resolve")]:
    def spy(self, *args, _real=cls.resolve, **kwargs):
        asked.append(kwargs["kernel"].repo_id)
        return _real(self, *args, **kwargs)
    cls.resolve = spy
import tune, peft, bitsandbytes
from transformers.integrations.gguf.kernels import get_gguf_kernel
assert get_gguf_kernel() is False
print(len(asked))
"""


def run_spy(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("USE_HUB_KERNELS", "LOCAL_KERNELS")}
    return subprocess.run([sys.executable, "-c", SPY], env={**base, "HF_HUB_OFFLINE": "1", **env},
                          capture_output=True, text=True)


def test_importing_tune_asks_no_hub_for_kernels_and_prints_nothing():
    result = run_spy()
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n", "")


def test_users_own_local_kernels_entries_are_kept():
    result = run_spy(LOCAL_KERNELS="someone/their-kernel=/opt/k")
    assert (result.returncode, result.stdout) == (0, "0\n")
    check = subprocess.run([sys.executable, "-c", "import tune, os; print(os.environ['LOCAL_KERNELS'])"],
                           env={**os.environ, "LOCAL_KERNELS": "someone/their-kernel=/opt/k"},
                           capture_output=True, text=True)
    assert check.stdout.split(":")[0] == "someone/their-kernel=/opt/k"


def test_hub_kernels_are_used_when_the_user_asks():
    # Offline, so nothing is downloaded; the hub's cache is consulted, which is what the user asked for.
    result = run_spy(USE_HUB_KERNELS="1")
    assert result.returncode == 0 and int(result.stdout) >= 1
