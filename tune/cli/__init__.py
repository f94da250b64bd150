"""The `tune` command line: one module per command group, each only parsing, calling the library and
printing. Every TuneError becomes one line per problem on stderr and exit code 2. Heavy libraries are
imported only inside the commands that train or load models, so --help, ls and validate stay fast."""

from __future__ import annotations

import sys

import typer

from tune.cli import data, evaluate, export, models, plan, quickstart, recipes, run, use
from tune.cli.console import err

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parameter-efficient fine-tuning from one YAML recipe.")

COMMANDS = {
    "ls": recipes.list_recipes, "cp": recipes.copy_recipe, "validate": recipes.validate, "run": run.run,
    "init-tiny": models.init_tiny, "schema": recipes.schema, "quickstart": quickstart.quickstart,
    "generate": use.generate, "chat": use.chat, "eval": evaluate.evaluate, "compare": evaluate.compare, "predict": use.predict,
    "merge": export.merge, "export": export.export, "plan": plan.plan,
}
for name, command in COMMANDS.items():
    # `tune run` passes what follows `--` to torchrun (several nodes)
    app.command(name, context_settings={"allow_extra_args": True} if name == "run" else None)(command)
app.add_typer(data.data_app, name="data")
app.add_typer(models.models_app, name="models")


def main() -> None:
    from tune.train import distributed

    if not distributed.is_main():  # one process of several: rank 0 speaks for the run
        import warnings

        warnings.simplefilter("ignore")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        from tune.train.launch import peer_failed, record_failure

        peer = distributed.world_size() > 1 and peer_failed(exc)
        if distributed.world_size() == 1 or (distributed.is_main() and not peer):
            raise
        import traceback

        # One traceback on the terminal, the cause's: rank 0 prints its own; any other (and rank 0's broken
        # collective when another process died first) goes to the error file the launcher reports from.
        record_failure(f"{type(exc).__name__}: {exc}", traceback.format_exc(), peer)
        sys.exit(1)
