"""The two consoles every command prints to, and `fail`: a TuneError becomes one line per problem on
stderr and its exit code (2 for bad input, 3 for a run that had to stop)."""

from __future__ import annotations

import typer
from rich.console import Console

from tune.errors import TuneError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def say(line: str) -> None:
    out.print(line, markup=False)


def fail(exc: TuneError) -> None:
    for line in exc.problems:
        err.print(line, markup=False)
    raise typer.Exit(exc.exit_code)
