"""train.eval_tasks: lm-evaluation-harness tasks a run scores after training, on the kept adapter and on the
base beside it (the same weights with the adapter switched off: no second model in memory), so "did it
lose general ability" is answered in the field's terms by every run and `tune compare` lines runs up by it.
The names are resolved and the data loaded before training starts: a typo costs seconds, not the run."""

from __future__ import annotations

from pathlib import Path

from tune.errors import TuneError


def problems(recipe, recipe_dir: Path | None) -> list[str]:
    """What `tune validate` can say without importing lm-eval: it is installed, and task files exist."""
    import importlib.util

    from tune.paths import find_file

    specs = recipe.train.eval_tasks
    if not specs:
        return []
    found = []
    if importlib.util.find_spec("lm_eval") is None:
        found.append("train.eval_tasks: needs lm-evaluation-harness: pip install 'tune-peft[eval]'")
    for number, spec in enumerate(specs):
        path = find_file(spec, recipe_dir) if spec.endswith((".yaml", ".yml")) else None
        if spec.endswith((".yaml", ".yml")) and (path is None or not path.is_file()):
            found.append(f"train.eval_tasks[{number}]: no such task file: {spec}")
    return found


def prepare(recipe, recipe_dir: Path | None, echo):
    """(task manager, task names), or None without eval_tasks; unknown names and unreachable data stop here."""
    from tune.infer.harness import load_tasks, resolve
    from tune.paths import find_file

    if not recipe.train.eval_tasks:
        return None
    specs = [str(find_file(spec, recipe_dir) or spec) if spec.endswith((".yaml", ".yml")) else spec
             for spec in recipe.train.eval_tasks]
    try:
        manager, names = resolve(specs, [])
        load_tasks(manager, names)
    except TuneError as exc:
        raise TuneError([f"train.eval_tasks: {line}" for line in exc.problems]) from None
    echo(f"eval tasks: {', '.join(names)} after training, on the base and the kept adapter")
    return manager, names


def score_after(prepared, recipe, model, tokenizer, staging: Path, echo) -> dict | None:
    """Both scores into staging/eval/lm-eval.json and .md, the table printed; {task: {base, tuned}} for run.json."""
    if prepared is None:
        return None
    import time

    from tune.infer.harness import load_tasks, score, table, write_report

    manager, names = prepared
    options = {"batch_size": recipe.train.batch_size, "limit": recipe.train.eval_tasks_limit, "seed": recipe.train.seed}
    started = time.perf_counter()
    tuned = score(model, tokenizer, manager, load_tasks(manager, names), **options)
    with model.disable_adapter():
        base = score(model, tokenizer, manager, load_tasks(manager, names), **options)
    report = {"target": "this run", "options": options, "lm_eval_version": tuned["lm_eval_version"],
              "tasks": {task: {"tuned": values, "base": base["results"].get(task, {}),
                               "samples": tuned["samples"].get(task)} for task, values in tuned["results"].items()}}
    write_report(report, staging)
    echo(f"\neval tasks ({time.perf_counter() - started:.0f} s, base and tuned):")
    for line in table(report).splitlines():
        echo(line)
    return {task: {"base": entry["base"], "tuned": entry["tuned"]} for task, entry in report["tasks"].items()}
