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
    options = {"batch_size": recipe.train.batch_size, "limit": recipe.train.eval_tasks_limit, "seed": recipe.train.seed,
               "progress": False}
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


def base_items(prepared, recipe, model, tokenizer, echo) -> dict[str, bool] | None:
    """train.kept_by: tasks: which task items the model answers right before training (None otherwise)."""
    if prepared is None or recipe.train.kept_by != "tasks":
        return None
    right = _items(prepared, recipe, model, tokenizer)
    echo(f"guard: keeps the base's right eval_tasks items ({sum(right.values())} of {len(right)} right)")
    return right


def _items(prepared, recipe, model, tokenizer) -> dict[str, bool]:
    from tune.infer.generate import inference
    from tune.infer.harness import load_tasks, score

    manager, names = prepared
    with inference(model):  # eval mode and no gradients, and the training mode back afterwards
        return score(model, tokenizer, manager, load_tasks(manager, names), batch_size=recipe.train.batch_size,
                     limit=recipe.train.eval_tasks_limit, seed=recipe.train.seed, per_item=True, progress=False)["items"]


def kept_by_tasks(evaluate, prepared, recipe, tokenizer, base: dict[str, bool] | None):
    """The guard's evaluate(policy, step) with its kept share counted on the tasks' items instead of probes: of
    the items the base got right, the share the policy still gets right."""
    if base is None:
        return evaluate
    from dataclasses import replace

    def evaluate_with_tasks(policy, step):
        now = _items(prepared, recipe, policy, tokenizer)
        right = [item for item, was_right in base.items() if was_right]
        kept = sum(now.get(item, False) for item in right) / len(right) if right else None
        return replace(evaluate(policy, step), kept=kept)
    return evaluate_with_tasks


def kept_of(base: dict[str, bool] | None) -> str:
    """What the guard's messages call the kept share."""
    return "probes" if base is None else "eval_tasks items"
