"""The package's shape, enforced: import-linter's contracts in pyproject.toml (layers, no circles), method
modules that stay short stories on the shared skeleton, and a handful of top-level modules."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

TUNE = REPO / "tune"


def test_import_contracts_hold():
    # lint-imports reads [tool.importlinter] from pyproject.toml; imports inside functions count too.
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_every_method_is_a_short_module_registered_in_one_dict():
    from tune.recipe.rules import METHODS as RULES
    from tune.train.methods import METHODS

    assert set(METHODS) == set(RULES)  # a method the schema accepts has a trainer, and the reverse
    for name in METHODS:
        lines = (TUNE / "train" / f"{name}.py").read_text().splitlines()
        assert len(lines) < 150, f"tune/train/{name}.py has {len(lines)} lines; shared steps belong in run.py"


def test_top_level_stays_a_handful_of_modules():
    modules = sorted(p.name for p in TUNE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert modules == ["errors.py", "output.py", "paths.py", "quiet.py"]
