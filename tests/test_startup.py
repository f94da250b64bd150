"""`tune --help`, `tune ls` and `tune validate` answer without importing the ML stack: those imports
take seconds, and these commands are what users run between edits. (Speed itself is measured in
bench/cli_startup.py; here only what gets imported is checked.)"""

import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate", "numpy")

# Run the real entry point in a fresh interpreter, then list the heavy packages it imported.
CODE = """
import sys
from tune.cli import main
sys.argv = ["tune", *{args!r}]
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
print("HEAVY", [m for m in {heavy!r} if m in sys.modules], code)
"""


@pytest.mark.parametrize("args", [["--help"], ["ls"], ["validate", str(REPO / "recipes" / "quickstart.yaml")],
                                  ["plan", "--help"]], ids=lambda a: " ".join(a)[:30])
def test_command_imports_no_ml_library(args):
    result = subprocess.run([sys.executable, "-c", CODE.format(args=args, heavy=HEAVY)], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    last = result.stdout.strip().splitlines()[-1]
    assert last == "HEAVY [] 0", (last, result.stderr[-2000:])


def test_the_check_sees_a_heavy_import():
    """The probe above would notice: `schema --json` is light too, so use a command that must load torch."""
    code = CODE.format(args=["init-tiny", "--help"], heavy=HEAVY).replace("main()", "import torch; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "'torch'" in result.stdout.strip().splitlines()[-1]
