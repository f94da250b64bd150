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
        hint = f"; did you mean '{close[0]}'?" if close else "; see `tune ls`"
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
    from tune.distributed import check as distributed_check
    from tune.gguf_base import model_problems

    try:
        parsed = recipe_io.load(recipe, overrides)
        problems = model_problems(parsed.model) + check(parsed.data, recipe.resolve().parent)
        problems += distributed_check(parsed, recipe.resolve().parent)  # e.g. a DeepSpeed config file
        if problems:
            raise TuneError([f"{recipe}: {problem}" for problem in problems])
    except TuneError as exc:
        fail(exc)
    out.print(f"{recipe}: OK ({parsed.train.method} of {parsed.model.name}, {parsed.adapter.method} "
              f"r={parsed.adapter.r}, data format {parsed.data.format}, output {parsed.output.dir})", markup=False)


@app.command(context_settings={"allow_extra_args": True})
def run(ctx: typer.Context,
        recipe: Path = typer.Argument(help="Recipe YAML file."),
        overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever output.dir holds."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last complete checkpoint "
                                    "(re-running into an unfinished run's dir does so too)."),
        nproc: int = typer.Option(None, "--nproc", min=1, help="Train in N processes on this host (one per GPU; "
                                  "gloo on the CPU) as distributed.strategy says; torchrun options for several "
                                  "nodes go after --, e.g. -- --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29500.")) -> None:
    """Train: produce a PEFT adapter and the run's records in output.dir."""
    from tune import distributed
    from tune import recipe as recipe_io
    from tune.quiet import quiet_libraries

    sets = list(overrides) + (["output.overwrite=true"] if overwrite else [])
    launcher_args = list(ctx.args) if ctx is not None else []
    if nproc is not None or launcher_args:  # several processes: checked here, then started through torchrun
        from tune.launch import from_cli

        try:
            code = from_cli(recipe, sets, resume, nproc, launcher_args, echo=lambda line: out.print(line, markup=False), err=err)
        except TuneError as exc:
            fail(exc)
        if code is not None:
            raise typer.Exit(code)
    quiet_libraries()
    from tune.train import TRAINERS

    try:
        parsed = recipe_io.load(recipe, sets)
        summary = TRAINERS[parsed.train.method](parsed, recipe, echo=lambda line: out.print(line, markup=False),
                                                resume=resume, console=out).summary
        distributed.finish()
    except TuneError as exc:
        fail(exc)
    if distributed.is_main():  # the other processes' summaries hold no losses: rank 0 kept the log
        print_summary(summary)


def print_summary(summary: dict) -> None:
    """The one screen a user reads when a run ends: what happened, where it is, what to do next."""
    eval_part = f", eval loss {summary['eval_loss']:.4f}" if summary.get("eval_loss") is not None else ""
    lines = [
        f"done: {summary['steps']} steps in {summary['train_seconds']:.1f} s "
        f"({summary['trained_tokens_per_second']:.0f} trained tokens/s"
        + (f", peak GPU memory {summary['peak_gpu_memory_bytes'] / 2**30:.2f} GiB" if summary.get("peak_gpu_memory_bytes") else "")
        + ")",
        f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}{eval_part}",
        f"adapter: {summary['output_dir']} (loss curve: loss_curve.png)",
        f"next: tune generate {summary['output_dir']} --prompt \"...\"   or   tune chat {summary['output_dir']}",
    ]
    if summary.get("method") == "classify":  # a classifier has labels to score, not text to generate
        lines[1] += f", accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f}" if summary.get("accuracy") is not None else ""
        lines[2] = f"adapter: {summary['output_dir']} (eval_metrics.json, confusion_matrix.png, loss_curve.png)"
        lines[3] = f"next: tune eval {summary['output_dir']} --data FILE   or   tune predict {summary['output_dir']} --data FILE --out preds.jsonl"
    out.print("\n".join(lines), markup=False)


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
def schema(markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown reference instead.")) -> None:
    """Print the recipe JSON Schema (for editor completion: tune schema > recipe.schema.json)."""
    from tune.reference import json_schema, markdown_reference

    out.print(markdown_reference() if markdown else json_schema(), markup=False, soft_wrap=True)


data_app = typer.Typer(no_args_is_help=True, help="Look at the data as the trainer will see it.")
app.add_typer(data_app, name="data")


@data_app.command("preview")
def data_preview(recipe: Path = typer.Argument(help="Recipe YAML file."),
                 count: int = typer.Option(3, "-n", min=1, help="How many examples."),
                 overrides: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Show rendered examples: trained tokens highlighted (or [[marked]] when piped), with token counts."""
    from rich.text import Text

    from tune import recipe as recipe_io
    from tune.data.inspect import preview
    from tune.quiet import quiet_libraries

    quiet_libraries()
    try:
        examples = preview(recipe_io.load(recipe, overrides), recipe.resolve().parent, count)
    except TuneError as exc:
        fail(exc)
    plain = not out.is_terminal
    for example in examples:
        out.print(f"--- {example.where}: {example.tokens} tokens, {example.trained} trained", markup=False)
        text = Text()
        for span, trained in example.spans:
            if plain:
                text.append(f"[[{span}]]" if trained else span)
            else:
                text.append(span, style="bold green" if trained else "dim")
        out.print(text)


@data_app.command("check")
def data_check(recipe: Path = typer.Argument(help="Recipe YAML file."),
               overrides: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Read every row: counts, token-length percentiles, rows over max_length, duplicates, roles, overlap."""
    from tune import recipe as recipe_io
    from tune.data.inspect import check_all
    from tune.quiet import quiet_libraries

    quiet_libraries()
    try:
        report = check_all(recipe_io.load(recipe, overrides), recipe.resolve().parent)
    except TuneError as exc:
        fail(exc)
    for line in report.lines:
        out.print(line, markup=False)
    for line in report.warnings[:20]:
        out.print(f"warning: {line}", markup=False)
    if report.errors:
        fail(TuneError(report.errors[:20] + ([f"... and {len(report.errors) - 20} more"] if len(report.errors) > 20 else [])))
    out.print("data check: OK", markup=False)


@app.command()
def quickstart(dest: Path = typer.Option(Path("runs/quickstart"), "--dir", help="Output dir of the run.")) -> None:
    """Offline demo: build the tiny model, fine-tune it, merge, export GGUF, and answer prompts."""
    from tune.cli_export import export, merge

    init_tiny(None, hidden_size=256, layers=4, force=False)
    run(None, bundled_recipes()["quickstart"], overrides=[f"output.dir={dest}"], overwrite=True, resume=False, nproc=None)
    merged, gguf = Path(f"{dest}-merged"), Path(f"{dest}-gguf")
    for step in (f"\n$ tune merge {dest} {merged}", f"\n$ tune export {dest} {gguf} --format gguf --quant q8_0"):
        out.print(step, markup=False)
        if "merge" in step:
            merge(dest, merged, dtype="auto", shard_size="2GB", base=None, verify=True, in_memory=False, overwrite=True)
        else:
            export(dest, gguf, fmt="gguf", quant="q8_0", dtype="auto", shard_size="2GB", base=None, verify=True,
                   overwrite=True)
    for question in QUICKSTART_PROMPTS:
        out.print(f"\n$ tune generate {merged} --prompt {question!r}", markup=False)
        generate(merged, prompt=question, data=None, out_file=None, system=None, max_new_tokens=24, temperature=0.0,
                 top_k=50, top_p=1.0, seed=0)


QUICKSTART_PROMPTS = ("What is the capital of France?", "What is 7 plus 8?")


def main() -> None:
    from tune import distributed

    if not distributed.is_main():  # one process of several: rank 0 speaks for the run
        import warnings

        warnings.simplefilter("ignore")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        from tune.launch import peer_failed, record_failure

        peer = distributed.world_size() > 1 and peer_failed(exc)
        if distributed.world_size() == 1 or (distributed.is_main() and not peer):
            raise
        import traceback

        # One traceback on the terminal, the cause's: rank 0 prints its own; any other (and rank 0's broken
        # collective when another process died first) goes to the error file the launcher reports from.
        record_failure(f"{type(exc).__name__}: {exc}", traceback.format_exc(), peer)
        sys.exit(1)


from tune.cli_use import chat, evaluate, generate, predict  # noqa: E402  (using a trained model)

app.command()(generate)
app.command()(chat)
app.command("eval")(evaluate)
app.command()(predict)

from tune.cli_export import export, merge  # noqa: E402  (the deploy stage's commands)

app.command()(merge)
app.command()(export)

from tune.cli_plan import plan  # noqa: E402

app.command()(plan)

from tune.cli_models import models_app  # noqa: E402

app.add_typer(models_app, name="models")
