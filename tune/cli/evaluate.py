"""`tune eval`: how good a model is. --data scores a file of rows (loss and perplexity; with --generate the
answers themselves: exact match, contains, ROUGE-L, BLEU, chrF; a classifier's accuracy and F1); --tasks
runs lm-evaluation-harness benchmarks, the run's base beside it with --compare-base. Results land in the
model dir's eval/ folder."""

from __future__ import annotations

from pathlib import Path

import typer

from tune.cli.console import fail, out, say_err
from tune.cli.use import ALLOW_PICKLE, MAX_NEW, SEED, TEMPERATURE, TOP_K, TOP_P, TRUST_REMOTE_CODE, _sampling_options
from tune.errors import TuneError


def evaluate(model: str = typer.Argument(help="A `tune run` output dir, a full model folder, or (with --tasks) a "
                                         "model name tune resolves, to score a base on its own."),
             data: Path = typer.Option(None, "--data", help="Labelled rows in the run's data format."),
             generate: bool = typer.Option(False, "--generate", "--exact-match", help="With --data: answer every "
                                           "row and score the answers against the references (exact match, "
                                           "contains, ROUGE-L, BLEU, chrF); per-row answers go to eval/."),
             tasks: str = typer.Option(None, "--tasks", help="lm-eval tasks, comma-separated: names (hellaswag, "
                                       "arc_easy, globs) or local task YAML files."),
             include_path: list[Path] = typer.Option([], "--include-path", help="A folder of lm-eval task YAMLs "
                                                     "(repeatable)."),
             compare_base: bool = typer.Option(False, "--compare-base", help="With --tasks: also score the run's "
                                               "base (the adapter switched off) and print the difference."),
             limit: float = typer.Option(None, "--limit", help="With --tasks: at most this many examples per task "
                                         "(a number < 1 is a share)."),
             num_fewshot: int = typer.Option(None, "--num-fewshot", min=0, help="With --tasks: examples in each "
                                             "prompt (the task's own default otherwise)."),
             chat_template: bool = typer.Option(False, "--chat-template", help="With --tasks: render prompts with "
                                                "the model's chat template (for chat models)."),
             batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts scored or answered at once."),
             max_new_tokens: int = MAX_NEW, temperature: float = TEMPERATURE, top_k: int = TOP_K,
             top_p: float = TOP_P, seed: int = SEED, trust_remote_code: bool = TRUST_REMOTE_CODE,
             allow_pickle: bool = ALLOW_PICKLE) -> None:
    """Score a model: --data FILE (loss, perplexity; --generate: answer metrics; classifiers: accuracy, F1)
    and/or --tasks (lm-evaluation-harness benchmarks)."""
    from tune.models.run_dir import grants
    from tune.quiet import quiet_libraries

    if data is None and not tasks:
        fail(TuneError("tune eval needs --data FILE, --tasks TASKS, or both"))
    quiet_libraries()
    granted = grants(trust_remote_code, allow_pickle)
    try:
        if tasks:
            from tune.infer.harness import evaluate_tasks, table

            specs = [spec.strip() for spec in tasks.split(",") if spec.strip()]
            report = evaluate_tasks(model, specs, include_path, say_err, granted, compare_base, batch_size=batch_size,
                                    limit=limit, num_fewshot=num_fewshot, chat_template=chat_template, seed=seed)
            out.print(table(report), markup=False)
            for path in report.get("written", []):
                say_err(f"wrote {path}")
        if data is not None:
            _score_file(Path(model), data, generate, batch_size, granted,
                        _sampling_options(max_new_tokens, temperature, top_k, top_p, seed))
    except TuneError as exc:
        fail(exc)


def _score_file(model_dir: Path, data: Path, generate: bool, batch_size: int, granted, sampling) -> None:
    from tune.infer.evaluate import evaluate as run_eval

    result = run_eval(model_dir, data, generate, sampling, say_err, granted, batch_size)
    if "accuracy" in result:
        from tune.infer.metrics import report_lines

        out.print(f"{data}: " + "\n".join(report_lines(result)), markup=False)
        return
    line = (f"{data}: {result['examples']} examples, {result['target_tokens']} target tokens, "
            f"loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}")
    if "generation" in result:
        scores = result["generation"]
        line += (f"; answers: exact match {scores['exact_match']:.1%}, contains {scores['contains']:.1%}, "
                 f"ROUGE-L {scores['rouge_l']:.4f}, BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}")
    out.print(line, markup=False)
    for path in result.get("written", []):
        say_err(f"wrote {path}")


def compare(runs: list[Path] = typer.Argument(help="Two or more `tune run` output dirs."),
            plot: Path = typer.Option(Path("compare.png"), "--plot", help="Where the overlaid training curves go "
                                      "(PNG)."),
            markdown: Path = typer.Option(None, "--markdown", help="Also write the table here as markdown.")) -> None:
    """Runs side by side from their output dirs: recipe differences, losses, rewards, probes, eval scores,
    time and memory, and one PNG of their curves."""
    from rich.table import Table

    from tune.infer.compare import compare as compare_runs
    from tune.output import write_text

    try:
        found = compare_runs(runs, plot)
    except TuneError as exc:
        fail(exc)
    table = Table(show_lines=False)
    table.add_column("")
    for label in found["labels"]:
        table.add_column(label, overflow="fold")
    for label, cells in found["rows"]:
        table.add_row(label, *cells)
    out.print(table)
    if markdown is not None:
        lines = ["| | " + " | ".join(found["labels"]) + " |", "|---" * (len(found["labels"]) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in found["rows"]]
        write_text(markdown, "\n".join(lines) + "\n")
        say_err(f"wrote {markdown}")
    if found["plot"]:
        say_err(f"wrote {found['plot']}")
