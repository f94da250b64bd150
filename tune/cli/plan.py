"""`tune plan`: print a recipe's estimated peak GPU memory, whether it fits, and the largest batch that
does. It reads only the model's config (torch and transformers load, no weights do)."""

from __future__ import annotations

from pathlib import Path

import typer

from tune.cli.console import fail, say
from tune.errors import TuneError


def plan(recipe: Path = typer.Argument(help="Recipe YAML file."),
         gpu_memory: str = typer.Option(None, "--gpu-memory",
                                        help="GPU memory to plan for, e.g. 24GiB (default: this machine's GPU)."),
         overrides: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.batch_size=8 (repeatable)."),
         nproc: int = typer.Option(1, "--nproc", min=1, help="Plan one device of N processes, split as the recipe's "
                                   "distributed section says (ddp, fsdp, deepspeed).")) -> None:
    """Estimate the run's peak GPU memory from the model config: weights, adapter, optimizer, activations."""
    from tune.plan import memory as planner
    from tune import recipe as recipe_io
    from tune.quiet import quiet_libraries

    quiet_libraries()
    try:
        parsed = recipe_io.load(recipe, overrides)
        gpu_bytes = planner.parse_size(gpu_memory) if gpu_memory else _this_gpu()
        lines = planner.render(planner.estimate(parsed, nproc, recipe.resolve().parent), gpu_bytes)
    except TuneError as exc:
        fail(exc)
    for line in lines:
        say(line)


def _this_gpu() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
