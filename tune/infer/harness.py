"""Standard benchmarks through EleutherAI's lm-evaluation-harness (the optional `tune-peft[eval]` extra): the
tasks are found and their data loaded before anything is scored, so an unknown name or data that cannot be
reached offline is one line, not a traceback ten minutes in. A task is a registered name (hellaswag,
arc_easy...), a glob of names, or a local task YAML (a path); local tasks are indexed alone, and lm-eval's
~15,000 built-in names only when a spec needs them (that index takes tens of seconds)."""

from __future__ import annotations

import functools
import logging
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tune.errors import TuneError

STDERR = "_stderr"


def _harness():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TuneError("--tasks needs lm-evaluation-harness: pip install 'tune-peft[eval]'") from None


@functools.lru_cache(maxsize=4)
def task_manager(include: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def _local_task_names(path: Path) -> list[str]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TuneError(f"--tasks {path}: not a readable task YAML ({str(exc).splitlines()[0]})") from None
    name = config.get("task") if isinstance(config, dict) else None
    names = name if isinstance(name, list) else [name]
    if not all(isinstance(each, str) for each in names):
        raise TuneError(f"--tasks {path}: a task YAML needs a `task:` name (lm-eval's task format)")
    return names


def resolve(specs: list[str], include: list[Path]) -> tuple[object, list[str]]:
    """(TaskManager, task names) for `--tasks` specs; every problem raises one TuneError line."""
    from tune.paths import find_file

    _harness()
    paths = [str(Path(folder).resolve()) for folder in include]
    for folder in include:
        if not Path(folder).is_dir():
            raise TuneError(f"--include-path {folder}: no such folder")
    names = []
    for spec in specs:
        if spec.endswith((".yaml", ".yml")):
            path = find_file(spec, None)  # the working dir, then tune's bundled files (data_templates/eval/...)
            if path is None or not path.is_file():
                raise TuneError(f"--tasks {spec}: no such task file")
            paths.append(str(path.resolve().parent))
            names += _local_task_names(path)
        else:
            names.append(spec)
    include_key = tuple(dict.fromkeys(paths))
    manager = task_manager(include_key, False) if include_key else None
    if manager is None or any(not manager.match_tasks([name]) for name in names):
        manager = task_manager(include_key, True)
    known, resolved = manager.all_tasks, []
    for name in names:
        matched = manager.match_tasks([name])
        if not matched:
            raise TuneError(f"--tasks: lm-eval has no task '{name}'{_did_you_mean(name, known)}")
        resolved += [each for each in matched if each not in resolved]
    return manager, resolved


def _did_you_mean(name: str, known: list[str]) -> str:
    try:  # lm-eval's own suggestions, where this version has them
        from lm_eval.api.registry import _suggest_similar

        close = _suggest_similar(name, known)
    except (ImportError, TypeError):
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(close[:3])}?" if close else "; `lm-eval ls tasks` lists them"


def load_tasks(manager, names: list[str]) -> list:
    """Each task built (its data loaded) on its own, so the one whose data is missing is named. A local task's
    relative `data_files` are found next to its YAML (lm-eval itself looks in the working directory, which
    breaks a task folder used from anywhere else); the working directory is still tried second."""
    import os

    built = []
    for name in names:
        entry = manager.task_index.get(name)
        folder = entry.yaml_path.parent if entry is not None and entry.yaml_path is not None else None
        places = ([folder] if folder is not None and "lm_eval" not in folder.parts else []) + [Path.cwd()]
        first_miss = None
        for attempt, place in enumerate(places, 1):
            here = Path.cwd()
            os.chdir(place)
            try:
                built += list(manager.load([name])["tasks"].values())
                break
            except FileNotFoundError as exc:
                first_miss = first_miss or str(exc).splitlines()[0]
                if attempt == len(places):
                    raise TuneError(f"task {name}: a data file it names is missing ({first_miss})") from None
            except (ConnectionError, OSError) as exc:
                raise TuneError(f"task {name}: its data cannot be loaded ({str(exc).splitlines()[0]}); offline, only "
                                "data already in the datasets cache or a local task YAML can be scored") from None
            except (KeyError, ValueError) as exc:
                raise TuneError(f"task {name}: {str(exc).splitlines()[0]}") from None
            finally:
                os.chdir(here)
    return built


def score(model, tokenizer, manager, tasks: list, batch_size: int = 8, limit: float | None = None,
          num_fewshot: int | None = None, chat_template: bool = False, seed: int = 0, per_item: bool = False,
          progress: bool = True) -> dict:
    """{"results": {task: {metric: value, metric_stderr: value}}, "samples": {task: n}, ...} for tasks built by
    load_tasks (a task holds its requests once scored: build them again for a second model)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from tune.quiet import quiet_libraries

    quiet_libraries()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task config notes, not the user's business
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with _without_environment_probe(), _progress_bars(progress):
        raw = lm_eval.simple_evaluate(model=wrapped, tasks=tasks, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, apply_chat_template=chat_template, log_samples=per_item,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed, bootstrap_iters=1000)
    results = {task: metrics(values) for task, values in raw["results"].items()}
    samples = {task: count.get("effective") for task, count in (raw.get("n-samples") or {}).items()}
    return {"results": results, "samples": samples, "lm_eval_version": raw.get("lm_eval_version"),
            "higher_is_better": raw.get("higher_is_better", {}),
            **({"items": right_items(raw)} if per_item else {})}


def right_items(raw: dict) -> dict[str, bool]:
    """{"task/doc id": scored right} by each task's first metric (acc, exact_match...), from lm-eval's samples."""
    found = {}
    for task, logged in (raw.get("samples") or {}).items():
        metrics = list((raw.get("higher_is_better") or {}).get(task) or {})
        for sample in logged:
            metric = next((m for m in metrics if isinstance(sample.get(m), (int, float))), None)
            if metric is not None:
                found[f"{task}/{sample['doc_id']}"] = bool(sample[metric])
    return found


@contextmanager
def _without_environment_probe():
    """lm-eval records the git commit of the working directory (`git describe` prints "fatal: not a git
    repository" outside one) and torch's environment report (seconds of subprocesses); tune records its own
    versions, so both are skipped."""
    from unittest import mock

    import lm_eval.evaluator as evaluator

    with ExitStack() as stack:
        for name, stand_in in (("get_git_commit_hash", lambda: None), ("add_env_info", lambda storage: None)):
            if hasattr(evaluator, name):
                stack.enter_context(mock.patch.object(evaluator, name, stand_in))
        yield


@contextmanager
def _progress_bars(shown: bool):
    """lm-eval's progress bars, or none (inside a training run, whose own lines are the log)."""
    if shown:
        yield
        return
    import importlib
    from unittest import mock

    from tqdm import tqdm

    def silent(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "disable": True})

    with ExitStack() as stack:
        for name in ("lm_eval.models.huggingface", "lm_eval.api.model", "lm_eval.api.task"):
            module = importlib.import_module(name)
            if hasattr(module, "tqdm"):
                stack.enter_context(mock.patch.object(module, "tqdm", silent))
        yield


def metrics(values: dict) -> dict:
    """lm-eval's "acc,none" / "acc_stderr,none" keys as acc / acc_stderr (a filter other than none kept as
    acc[filter]); numbers only."""
    found = {}
    for key, value in values.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, filter_name = key.split(",", 1)
        found[metric if filter_name == "none" else f"{metric}[{filter_name}]"] = float(value)
    return found


def load_target(target: str, echo, granted: frozenset[str]):
    """(model, tokenizer, folder to write results in or None) for a run dir, a model folder or a model name
    tune resolves (packaged, GGUF, hub id)."""
    from tune.infer.generate import load_for_inference

    if Path(target).is_dir():
        model, tokenizer = load_for_inference(Path(target), echo, granted)
        return model, tokenizer, Path(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.models.resolve import model_source
    from tune.recipe import ModelSection

    source = model_source(ModelSection(name=target), echo)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True).eval()
    return model, tokenizer, None


def evaluate_tasks(target: str, specs: list[str], include: list[Path], echo, granted: frozenset[str] = frozenset(),
                   compare_base: bool = False, **options) -> dict:
    """Score the model on the tasks (and its base with the adapter switched off, when asked); the report is
    written to <run dir>/eval/lm-eval.json and .md when the target is a folder."""
    manager, names = resolve(specs, include)
    tasks = load_tasks(manager, names)  # a missing data file stops here, before a model is loaded
    model, tokenizer, folder = load_target(target, echo, granted)
    if compare_base and not hasattr(model, "disable_adapter"):
        raise TuneError(f"--compare-base: {target} is not a run dir with an adapter; score its base on its own "
                        "with `tune eval BASE --tasks ...`")
    echo(f"lm-eval: {', '.join(names)} on {target}" + (" and its base" if compare_base else ""))
    tuned = score(model, tokenizer, manager, tasks, **options)
    base = None
    if compare_base:
        with model.disable_adapter():
            base = score(model, tokenizer, manager, load_tasks(manager, names), **options)
    report = {"target": str(target), "options": options, "lm_eval_version": tuned["lm_eval_version"],
              "tasks": {task: {"tuned": values, "samples": tuned["samples"].get(task),
                               **({"base": base["results"][task]} if base else {})}
                        for task, values in tuned["results"].items()}}
    if folder is not None:
        report["written"] = write_report(report, folder)
    return report


def table(report: dict) -> str:
    """A markdown table: one row per task and metric (± its standard error), and the base's score with the
    change when the base was scored."""
    with_base = any("base" in entry for entry in report["tasks"].values())
    lines = ["| task | metric | " + ("base | tuned | change |" if with_base else "score |"),
             "|---|---|" + ("---|---|---|" if with_base else "---|")]
    for task, entry in report["tasks"].items():
        for metric, value in entry["tuned"].items():
            name, bracket, rest = metric.partition("[")
            if name.endswith(STDERR):
                continue
            error = entry["tuned"].get(name + STDERR + bracket + rest)
            shown = f"{value:.4f}" + (f" ± {error:.4f}" if error is not None else "")
            before = entry.get("base", {}).get(metric)
            if not with_base:
                lines.append(f"| {task} | {metric} | {shown} |")
            elif before is None:
                lines.append(f"| {task} | {metric} | | {shown} | |")
            else:
                lines.append(f"| {task} | {metric} | {before:.4f} | {shown} | {value - before:+.4f} |")
    return "\n".join(lines)


def write_report(report: dict, folder: Path) -> list[str]:
    """eval/lm-eval.json keeps every task ever scored on this model (a later score of a task replaces the
    earlier one), and eval/lm-eval.md shows them all."""
    import json
    import time

    from tune.output import write_json, write_text

    out = Path(folder) / "eval"
    out.mkdir(exist_ok=True)
    path = out / "lm-eval.json"
    try:
        kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"tasks": {}}
    except (OSError, ValueError):
        kept = {"tasks": {}}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    kept["tasks"] = kept.get("tasks", {}) | {task: entry | {"when": stamp, "options": report["options"]}
                                              for task, entry in report["tasks"].items()}
    kept["lm_eval_version"] = report["lm_eval_version"]
    write_json(path, kept)
    write_text(out / "lm-eval.md", table(kept) + "\n")
    return [str(path), str(out / "lm-eval.md")]
