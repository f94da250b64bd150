"""The two consoles every command prints to, and `fail`: a TuneError becomes one line per problem on
stderr and its exit code (2 for bad input, 3 for a run that had to stop)."""

from __future__ import annotations

import typer
from rich.console import Console

from tune.train.distributed import is_main
from tune.errors import TuneError

# In a run of several processes only rank 0 prints; the others' errors reach the launcher (see fail).
out = Console(highlight=False, soft_wrap=True, quiet=not is_main())
err = Console(stderr=True, highlight=False, soft_wrap=True, quiet=not is_main())


def say(line: str) -> None:
    out.print(line, markup=False)


def say_err(line: str) -> None:
    """Notes that are not the command's output (a model being converted), kept off stdout for pipes."""
    err.print(line, markup=False)


def fail(exc: TuneError) -> None:
    for line in exc.problems:
        err.print(line, markup=False)
    if not is_main():
        from tune.train.launch import record_failure

        record_failure("\n".join(exc.problems))
    raise typer.Exit(exc.exit_code)
