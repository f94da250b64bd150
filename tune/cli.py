"""The `tune` command line. It parses, calls one library function per command and prints; every
TuneError becomes one line per problem on stderr and exit code 2. Heavy libraries are imported only
inside the commands that train or load models, so --help, ls and validate stay fast."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import typer
from rich.console import Console

from tune.errors import TuneError
from tune.paths import bundled_dir, models_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parameter-efficient fine-tuning from one YAML recipe.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SET_HELP = "Override a recipe key: --set train.learning_rate=1e-4 (repeatable)."


def fail(exc: TuneError) -> None:
    for line in exc.problems:
        err.print(line, markup=False, soft_wrap=True)
    raise typer.Exit(2)


def bundled_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(bundled_dir("recipes").glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """A recipe's first comment line is its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


@app.command("ls")
def list_recipes() -> None:
    """List the bundled recipes, one line each."""
    recipes = bundled_recipes()
    width = max(len(name) for name in recipes)
    for name, path in recipes.items():
        out.print(f"{name:<{width}}  {recipe_summary(path)}", markup=False)


@app.command("cp")
def copy_recipe(name: str = typer.Argument(help="Bundled recipe name (see `tune ls`)."),
                dest: Path = typer.Argument(help="Where to write the copy."),
                force: bool = typer.Option(False, "--force", help="Replace an existing file.")) -> None:
    """Copy a bundled recipe to edit."""
    recipes = bundled_recipes()
    if name not in recipes:
        import difflib

        close = difflib.get_close_matches(name, list(recipes), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; see `tune ls`"
        fail(TuneError(f"{name}: no bundled recipe of that name{hint}"))
    if dest.is_dir():
        dest = dest / f"{name}.yaml"
    if dest.exists() and not force:
        fail(TuneError(f"{dest}: already exists; pass --force to replace it"))
    shutil.copyfile(recipes[name], dest)
    out.print(f"wrote {dest}", markup=False)


@app.command()
def validate(recipe: Path = typer.Argument(help="Recipe YAML file."),
             overrides: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Check a recipe and its data files without loading any model."""
    from tune import recipe as recipe_io
    from tune.data.prepare import check

    try:
        parsed = recipe_io.load(recipe, overrides)
        problems = check(parsed.data, recipe.resolve().parent)
        if problems:
            raise TuneError([f"{recipe}: {problem}" for problem in problems])
    except TuneError as exc:
        fail(exc)
    out.print(f"{recipe}: OK ({parsed.train.method} of {parsed.model.name}, {parsed.adapter.method} "
              f"r={parsed.adapter.r}, data format {parsed.data.format}, output {parsed.output.dir})", markup=False)


@app.command()
def run(recipe: Path = typer.Argument(help="Recipe YAML file."),
        overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help="Allow a non-empty output dir.")) -> None:
    """Train: produce a PEFT adapter and the run's records in output.dir."""
    from tune import recipe as recipe_io
    from tune.train import TRAINERS

    try:
        parsed = recipe_io.load(recipe, list(overrides) + (["output.overwrite=true"] if overwrite else []))
        summary = TRAINERS[parsed.train.method](parsed, recipe, echo=lambda line: out.print(line, markup=False))
    except TuneError as exc:
        fail(exc)
    out.print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} in {summary['steps']} steps "
              f"({summary['train_seconds']:.1f} s); adapter in {summary['output_dir']}", markup=False)


@app.command("init-tiny")
def init_tiny(dest: Path = typer.Argument(None, help="Folder to write; default TUNE_HOME/models/tiny-llama."),
              hidden_size: int = typer.Option(128, help="Hidden size of the random model."),
              layers: int = typer.Option(2, help="Number of decoder layers."),
              force: bool = typer.Option(False, "--force", help="Rebuild even if the folder exists.")) -> None:
    """Build a tiny random Llama model with a locally trained tokenizer and chat template (offline)."""
    from tune.tiny import build

    path = build(dest or models_dir() / "tiny-llama", hidden_size=hidden_size, layers=layers, overwrite=force)
    out.print(f"tiny model in {path}", markup=False)


@app.command()
def schema(as_json: bool = typer.Option(False, "--json", help="Print JSON Schema instead of Markdown.")) -> None:
    """Print the recipe reference (every key, its type, default and meaning)."""
    from tune.reference import json_schema, markdown_reference

    out.print(json_schema() if as_json else markdown_reference(), markup=False, soft_wrap=True)


@app.command()
def quickstart(dest: Path = typer.Option(Path("runs/quickstart"), "--dir", help="Output dir of the run.")) -> None:
    """Offline demo: build the tiny model, fine-tune it with recipes/quickstart.yaml, answer a prompt."""
    init_tiny(None, hidden_size=128, layers=2, force=False)
    run(bundled_recipes()["quickstart"], overrides=[f"output.dir={dest}"], overwrite=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
