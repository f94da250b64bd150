"""The `tune` command line. It parses, calls one library function per command and prints; every
TuneError becomes one line per problem on stderr and exit code 2. Heavy libraries are imported only
inside the commands that train or load models, so --help, ls and validate stay fast."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import typer

from tune.console import err, fail, out
from tune.errors import TuneError
from tune.paths import bundled_dir, models_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parameter-efficient fine-tuning from one YAML recipe.")

SET_HELP = "Override a recipe key: --set train.learning_rate=1e-4 (repeatable)."


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
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever output.dir holds."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last complete checkpoint "
                                    "(re-running into an unfinished run's dir does so too).")) -> None:
    """Train: produce a PEFT adapter and the run's records in output.dir."""
    from tune import recipe as recipe_io
    from tune.quiet import quiet_libraries

    quiet_libraries()
    from tune.train import TRAINERS

    try:
        parsed = recipe_io.load(recipe, list(overrides) + (["output.overwrite=true"] if overwrite else []))
        summary = TRAINERS[parsed.train.method](parsed, recipe, echo=lambda line: out.print(line, markup=False),
                                                resume=resume).summary
    except TuneError as exc:
        fail(exc)
    out.print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} in {summary['steps']} steps "
              f"({summary['train_seconds']:.1f} s); adapter in {summary['output_dir']}", markup=False)


@app.command("init-tiny")
def init_tiny(dest: Path = typer.Argument(None, help="Folder to write; default TUNE_HOME/models/tiny-llama."),
              hidden_size: int = typer.Option(256, help="Hidden size of the random model."),
              layers: int = typer.Option(4, help="Number of decoder layers."),
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
def generate(model_dir: Path = typer.Argument(help="A `tune run` output dir (base + adapter) or a full model folder."),
             prompt: str = typer.Option(..., "--prompt", "-p", help="The user message."),
             system: str = typer.Option(None, "--system", help="Optional system message."),
             max_new_tokens: int = typer.Option(128, min=1, help="Longest answer in tokens."),
             temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy; higher = more random."),
             top_k: int = typer.Option(50, min=0, help="Sample from the k most likely tokens."),
             top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Sample from the smallest set with this mass."),
             seed: int = typer.Option(0, help="Seed for sampling.")) -> None:
    """Answer one prompt with the model, using the chat template it was trained with."""
    from tune.generate import Sampling, generate as run_generate, load_for_inference
    from tune.quiet import quiet_libraries

    quiet_libraries()
    try:
        model, tokenizer = load_for_inference(model_dir)
    except TuneError as exc:
        fail(exc)
    out.print(run_generate(model, tokenizer, prompt, Sampling(max_new_tokens, temperature, top_k, top_p, seed),
                           system), markup=False)


@app.command()
def quickstart(dest: Path = typer.Option(Path("runs/quickstart"), "--dir", help="Output dir of the run.")) -> None:
    """Offline demo: build the tiny model, fine-tune it with recipes/quickstart.yaml, answer a prompt."""
    init_tiny(None, hidden_size=256, layers=4, force=False)
    run(bundled_recipes()["quickstart"], overrides=[f"output.dir={dest}"], overwrite=True, resume=False)
    for question in QUICKSTART_PROMPTS:
        out.print(f"\n$ tune generate {dest} --prompt {question!r}", markup=False)
        generate(dest, prompt=question, system=None, max_new_tokens=24, temperature=0.0, top_k=50, top_p=1.0, seed=0)


QUICKSTART_PROMPTS = ("What is the capital of France?", "What is 7 plus 8?")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

