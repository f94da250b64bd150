"""`tune ls`, `tune cp`, `tune validate` and `tune schema`: the bundled recipes, and checking a recipe
without loading any model."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from tune.cli.console import fail, out, say_err
from tune.errors import TuneError
from tune.paths import bundled_dir

SET_HELP = "Override a recipe key: --set train.learning_rate=1e-4 (repeatable)."


def bundled_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(bundled_dir("recipes").glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """A recipe's first comment line is its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def list_recipes() -> None:
    """List the bundled recipes, one line each."""
    recipes = bundled_recipes()
    width = max(len(name) for name in recipes)
    for name, path in recipes.items():
        out.print(f"{name:<{width}}  {recipe_summary(path)}", markup=False)


def copy_recipe(name: str = typer.Argument(help="Bundled recipe name (see `tune ls`)."),
                dest: Path = typer.Argument(help="Where to write the copy."),
                force: bool = typer.Option(False, "--force", help="Replace an existing file.")) -> None:
    """Copy a bundled recipe to edit."""
    recipes = bundled_recipes()
    if name not in recipes:
        import difflib

        close = difflib.get_close_matches(name, list(recipes), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; see `tune ls`"
        fail(TuneError(f"{name}: no bundled recipe of that name{hint}"))
    if dest.is_dir():
        dest = dest / f"{name}.yaml"
    if dest.exists() and not force:
        fail(TuneError(f"{dest}: already exists; pass --force to replace it"))
    shutil.copyfile(recipes[name], dest)
    out.print(f"wrote {dest}", markup=False)


def validate(recipe: Path = typer.Argument(help="Recipe YAML file."),
             overrides: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Check a recipe and its data files without loading any model."""
    from tune import recipe as recipe_io
    from tune.train.checks import findings

    try:
        parsed = recipe_io.load(recipe, overrides)
        problems, warnings = findings(parsed, recipe.resolve().parent)  # what `tune run` checks first, too
        if problems:
            raise TuneError([f"{recipe}: {problem}" for problem in problems])
    except TuneError as exc:
        fail(exc)
    for line in warnings:
        say_err(f"{recipe}: warning: {line}")
    from tune.models.layers import coverage_line

    covered = coverage_line(parsed)
    if covered:
        out.print(f"{recipe}: {covered}", markup=False)
    out.print(f"{recipe}: OK ({parsed.train.method} of {parsed.model.name}, {parsed.adapter.method} "
              f"r={parsed.adapter.r}, data format {parsed.data.format}, output {parsed.output.dir})", markup=False)




def schema(markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown reference instead.")) -> None:
    """Print the recipe JSON Schema (for editor completion: tune schema > recipe.schema.json)."""
    from tune.recipe.reference import json_schema, markdown_reference

    out.print(markdown_reference() if markdown else json_schema(), markup=False, soft_wrap=True)
