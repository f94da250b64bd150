"""`tune data preview`, `check` and `augment`: the data as the trainer will see it."""

from __future__ import annotations

from pathlib import Path

import typer

from tune.cli.console import fail, out
from tune.cli.recipes import SET_HELP
from tune.errors import TuneError

data_app = typer.Typer(no_args_is_help=True, help="Look at the data as the trainer will see it.")


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
        parsed = recipe_io.load(recipe, overrides)
        examples = preview(parsed, recipe.resolve().parent, count, _tokenizer(parsed))
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
        parsed = recipe_io.load(recipe, overrides)
        report = check_all(parsed, recipe.resolve().parent, _tokenizer(parsed))
    except TuneError as exc:
        fail(exc)
    for line in report.lines:
        out.print(line, markup=False)
    for line in report.warnings[:20]:
        out.print(f"warning: {line}", markup=False)
    if report.errors:
        fail(TuneError(report.errors[:20] + ([f"... and {len(report.errors) - 20} more"] if len(report.errors) > 20 else [])))
    out.print("data check: OK", markup=False)


@data_app.command("augment")
def data_augment(recipe: Path = typer.Argument(help="Recipe YAML file with a data.augment section."),
                 out_file: Path = typer.Option(..., "--out", help="JSONL file to write the generated rows to."),
                 overrides: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Write the rewordings, statements and reverse questions data.augment would train on, for review."""
    from tune import recipe as recipe_io
    from tune.cli.console import say_err
    from tune.infer.augment import augment_file
    from tune.quiet import quiet_libraries

    quiet_libraries()
    try:
        parsed = recipe_io.load(recipe, overrides)
        note = augment_file(parsed, recipe.resolve().parent, out_file, say_err)
    except TuneError as exc:
        fail(exc)
    out.print(f"{note}; wrote {out_file}", markup=False)
    out.print(f"review it (cut, fix or add rows), then `data.augment.rows: {out_file}` trains it as it stands",
              markup=False)


def _tokenizer(recipe):
    from tune.cli.console import say_err
    from tune.models.load import load_tokenizer
    from tune.models.resolve import model_source

    return load_tokenizer(recipe.model, model_source(recipe.model, say_err))
