"""`tune run`: train a recipe in this process, or in several through torchrun (`--nproc`), and print the
one screen a user reads when the run ends."""

from __future__ import annotations

from pathlib import Path

import typer

from tune.cli.console import err, fail, out
from tune.cli.recipes import SET_HELP
from tune.errors import TuneError


def run(ctx: typer.Context,
        recipe: Path = typer.Argument(help="Recipe YAML file."),
        overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever output.dir holds."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last complete checkpoint "
                                    "(re-running into an unfinished run's dir does so too)."),
        allow_data_change: bool = typer.Option(False, "--allow-data-change", help="Resume even though the data "
                                               "files, template or tokenization changed since the checkpoint."),
        nproc: int = typer.Option(None, "--nproc", min=1, help="Train in N processes on this host (one per GPU; "
                                  "gloo on the CPU) as distributed.strategy says; torchrun options for several "
                                  "nodes go after --, e.g. -- --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29500.")) -> None:
    """Train: produce a PEFT adapter and the run's records in output.dir."""
    from tune.train import distributed
    from tune import recipe as recipe_io
    from tune.quiet import quiet_libraries

    sets = list(overrides) + (["output.overwrite=true"] if overwrite else [])
    launcher_args = list(ctx.args) if ctx is not None else []
    if nproc is not None or launcher_args:  # several processes: checked here, then started through torchrun
        from tune.train.launch import from_cli

        try:
            code = from_cli(recipe, sets, resume, nproc, launcher_args, echo=lambda line: out.print(line, markup=False),
                            err=err, allow_data_change=allow_data_change)
        except TuneError as exc:
            fail(exc)
        if code is not None:
            raise typer.Exit(code)
    quiet_libraries()
    from tune.train.methods import run_recipe

    try:
        parsed = recipe_io.load(recipe, sets)
        summary = run_recipe(parsed, recipe, echo=lambda line: out.print(line, markup=False), resume=resume,
                             console=out, allow_data_change=allow_data_change).summary
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
        written = [name for name in ("eval_metrics.json", "confusion_matrix.png", "loss_curve.png")
                   if (Path(summary["output_dir"]) / name).is_file()]  # no plot above 100 labels, no report without eval
        lines[2] = f"adapter: {summary['output_dir']}" + (f" ({', '.join(written)})" if written else "")
        lines[3] = f"next: tune eval {summary['output_dir']} --data FILE   or   tune predict {summary['output_dir']} --data FILE --out preds.jsonl"
    if summary.get("method") == "reward":
        accuracy = summary.get("eval_pairwise_accuracy")
        lines[1] += f", held-out pairwise accuracy {accuracy:.2f}" if accuracy is not None else ""
        lines[3] = (f"next: tune predict {summary['output_dir']} --data pairs.jsonl --out scores.jsonl   or   "
                    f"reward.model: {summary['output_dir']} in a grpo recipe")
    if summary.get("method") == "grpo":  # its loss sits near 0 by construction; the reward is what moved
        lines[1] = (f"reward {_number(summary.get('first_reward'))} -> {_number(summary.get('last_reward'))} (training "
                    f"samples); held-out {_number(summary.get('eval_reward_base'))} (base) -> "
                    f"{_number(summary.get('eval_reward_tuned'))} (tuned); the guard's evaluations took "
                    f"{summary.get('guard_seconds') or 0:.0f} s of the training time")
    out.print("\n".join(lines), markup=False)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
