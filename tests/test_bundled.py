"""Bundled recipes validate, and the recipe reference (docs/recipes.md) and the README's commands stay in sync
with the code."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tune.recipe.reference import markdown_reference

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
README = (REPO / "README.md").read_text()
RECIPE_REFERENCE = (REPO / "docs" / "recipes.md").read_text()


def test_there_are_hub_recipes_besides_the_quickstart():
    names = {path.stem for path in RECIPES}
    assert "quickstart" in names and len(names) >= 4


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_bundled_recipe_validates(recipe):
    result = subprocess.run([sys.executable, "-m", "tune", "validate", str(recipe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20, "the first comment line is the `tune ls` description"


def test_recipe_reference_matches_the_schema():
    block = RECIPE_REFERENCE.split("<!-- reference:start -->\n")[1].split("<!-- reference:end -->")[0]
    assert block == markdown_reference(), "docs/recipes.md is stale: regenerate it with `tune schema --markdown`"


def test_readme_leads_with_the_two_commands_and_ci_runs_the_second():
    commands = re.findall(r"```bash\n(.+?)\n```", README)
    assert README.count("```bash") == 2, "README's only ```bash blocks are the quickstart and test commands"
    quickstart, tests = commands[0], commands[1]
    assert "torch==2.13.0" in quickstart and quickstart.endswith("tune quickstart")
    assert "torch==2.13.0" in tests and "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_readme_names_the_versions_ci_installs():
    pinned = dict(line.split("==") for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    pinned = {name.lower().replace("_", "-"): version for name, version in pinned.items()}
    named = re.search(r"the ones the suite last passed on\n\((.+?)\)", README, re.S).group(1)
    names = {"transformers": "transformers", "PEFT": "peft", "TRL": "trl", "bitsandbytes": "bitsandbytes",
             "accelerate": "accelerate", "datasets": "datasets"}
    for name, version in re.findall(r"([A-Za-z]+) (\d[\w.]*)", named):
        if name != "torch":
            assert pinned[names[name]] == version, f"README says {name} {version}; .ci/constraints.txt pins {pinned[names[name]]}"
    assert "torch" not in pinned, "torch is installed first, by hand; a pin here would fight a CUDA build"
