"""Reward functions for GRPO: the built-ins, the user's FILE.py:NAME functions, and the checks that make a
broken reward one line naming the file, function and prompt row instead of a traceback mid-run.

Every reward is called the way TRL's GRPOTrainer calls it, f(prompts, completions, completion_ids,
**columns) -> one float (or None) per completion. Prompts reach TRL as chat messages; a user's function sees
what the row held: for a text prompt, the prompt and completions as plain strings."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import numbers
import re
from pathlib import Path

from tune.data.probes import contains_whole
from tune.data.prompts import PROMPT_TEXT, ROW, WHERE
from tune.errors import TuneError
from tune.paths import find_regular_file
from tune.recipe.rewards import RewardFunction

TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")


def text_of(completion) -> str:
    """A completion as TRL hands it over (text, or a list of messages) -> the reply's text."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion if message.get("role") == "assistant")


def _normal(text, ignore_case: bool) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip().rstrip(".!").strip()
    return text.lower() if ignore_case else text


class Reward:
    """One reward: called by TRL during training and by tune on the held-out answers."""

    def __init__(self, label: str, score, source: str | None = None):
        self.__name__ = label  # the name TRL logs it under: rewards/<label>/mean
        self.score = score  # (prompts, completions, completion ids, columns) -> list of float | None
        self.source = source  # the user's file, for error lines; None for a built-in
        self.rows: list[dict] | None = None  # the prompt rows, looked up by ROW (see bind_rows)

    def __call__(self, prompts, completions, completion_ids=None, **columns):
        if ROW in columns and self.rows is not None:
            # The row's own Python values, not their Arrow round trip (which turns 7 into 7.0 next to 7.5):
            # training scores exactly what the held-out evaluation scores.
            picked = [self.rows[index] for index in columns.pop(ROW)]
            columns |= {key: [row[key] for row in picked] for key in picked[0] if key != "prompt"}
        wheres = columns.get(WHERE) or ["prompt row ?"] * len(completions)
        try:
            values = self.score(prompts, completions, completion_ids, columns)
        except TuneError:
            raise
        except Exception as exc:  # noqa: BLE001  (the user's code may raise anything)
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise TuneError(f"{self._who()}: raised {type(exc).__name__}: {first} (on {wheres[0]})") from None
        return check_values(values, len(completions), self._who(), wheres)

    def _who(self) -> str:
        return f"reward {self.source}:{self.__name__}" if self.source else f"reward {self.__name__}"


def check_values(values, expected: int, who: str, wheres: list[str]) -> list[float | None]:
    if not isinstance(values, (list, tuple)):
        raise TuneError(f"{who}: returned {type(values).__name__}, not a list of numbers (on {wheres[0]})")
    if len(values) != expected:
        raise TuneError(f"{who}: returned {len(values)} rewards for {expected} completions; return one per "
                        f"completion (on {wheres[0]})")
    for value, where in zip(values, wheres):  # numpy scalars and bools are numbers too, as TRL takes them
        if value is not None and (not isinstance(value, numbers.Real) or not math.isfinite(float(value))):
            raise TuneError(f"{who}: returned {value!r}, not a finite number (or None to skip); on {where}")
    return [None if value is None else float(value) for value in values]


def bind_rows(funcs: list, rows: list[dict]) -> None:
    """Training passes TRL only each prompt and its row number (ROW); the rewards read the row's columns here."""
    for func in funcs:
        func.rows = rows


def build_all(section, recipe_dir: Path | None, echo) -> tuple[list, list[dict], list[float]]:
    """The `reward:` section -> (callables named as TRL logs them, what the run records, their weights)."""
    built = [build(spec, recipe_dir, echo) for spec in section.functions]
    if section.model is not None:
        built.append(from_reward_model(section.model, recipe_dir, echo))
    funcs = unique_names([reward for reward, _ in built])
    return funcs, [record for _, record in built], section.weights or [1.0] * len(funcs)


def build(spec: RewardFunction, recipe_dir: Path | None, echo) -> tuple[Reward, dict]:
    """The callable for one `reward.functions` entry, and what the run records about it."""
    if spec.builtin:
        return Reward(spec.function, _BUILTINS[spec.function](spec)), {"function": spec.function, "builtin": True}
    return _from_file(spec.function, recipe_dir, echo)


def from_reward_model(name: str, recipe_dir: Path | None, echo) -> tuple[Reward, dict]:
    """`reward.model`: a tune reward run's score of the prompt and the completion."""
    from tune.infer.reward_model import load_reward_model, score
    from tune.paths import find_file

    folder = find_file(name, recipe_dir) or Path(name)
    model, tokenizer, max_length = load_reward_model(folder, echo, key="reward.model")
    import torch

    if torch.cuda.is_available():  # scored every step: on the accelerator, beside the policy
        from accelerate import PartialState

        model.to(PartialState().device)
    digest = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()

    def scores(prompts, completions, completion_ids, columns):
        conversations = [list(p) + [{"role": "assistant", "content": text_of(c)}] for p, c in zip(prompts, completions)]
        return score(model, tokenizer, conversations, max_length)

    return Reward("reward_model", scores), {"model": str(folder.resolve()), "adapter_sha256": digest}


def unique_names(funcs: list) -> list:
    """Two entries of one built-in (two regexes) would log under one name: number the repeats."""
    seen: dict[str, int] = {}
    for func in funcs:
        seen[func.__name__] = seen.get(func.__name__, 0) + 1
        if seen[func.__name__] > 1:
            func.__name__ = f"{func.__name__}_{seen[func.__name__]}"
    return funcs


def _from_file(spec: str, recipe_dir: Path | None, echo) -> tuple[Reward, dict]:
    file_name, _, name = spec.rpartition(":")
    path = find_regular_file(file_name, recipe_dir)
    if path is None:
        raise TuneError(f"reward.functions: {file_name}: no such file (looked beside the recipe and in the "
                        "current folder)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    echo(f"reward: running Python code from {path} (sha256 {digest[:16]}); only use reward files you trust")
    module_spec = importlib.util.spec_from_file_location(f"tune_reward_{digest[:12]}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001  (importing runs the user's module code)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TuneError(f"reward.functions: {path}: importing it raised {type(exc).__name__}: {first}") from None
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__)
        raise TuneError(f"reward.functions: {path} has no function {name} (functions in it: "
                        f"{', '.join(found) or 'none'})")
    accepts = _accepted(function)

    def score(prompts, completions, completion_ids, columns):
        texts = [row_text if row_text is not None else prompt
                 for prompt, row_text in zip(prompts, columns.get(PROMPT_TEXT) or [None] * len(prompts))]
        plain = [text_of(c) if isinstance(t, str) else c for c, t in zip(completions, texts)]
        given = {k: v for k, v in columns.items() if k not in (WHERE, PROMPT_TEXT)}
        given |= {"prompts": texts, "completions": plain, "completion_ids": completion_ids}
        if accepts is not None:  # no **kwargs: only what it names (TRL calls rewards by keyword, so do we)
            given = {k: v for k, v in given.items() if k in accepts}
        return function(**given)

    return Reward(name, score, source=str(path)), {"function": spec, "file": str(path), "sha256": digest}


def _accepted(function) -> set[str] | None:
    """The keyword names a function takes, or None when it takes **kwargs (then it gets every column)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


# ---- built-ins: each (spec) -> score(prompts, completions, completion_ids, columns)

def _answer_column(spec: RewardFunction, columns: dict) -> list:
    if spec.column not in columns:
        available = sorted(k for k in columns if k not in (WHERE, PROMPT_TEXT, *TRL_EXTRAS))
        raise TuneError(f"reward {spec.function}: the prompt rows have no column '{spec.column}' (columns: "
                        f"{', '.join(available) or 'none'}); set column: in its reward.functions entry")
    return columns[spec.column]


def _exact_answer(spec):
    def score(prompts, completions, completion_ids, columns):
        answers = _answer_column(spec, columns)
        return [float(_normal(text_of(c), spec.ignore_case) == _normal(a, spec.ignore_case))
                for c, a in zip(completions, answers)]
    return score


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _final_number(spec):
    """1.0 when the last number in the reply equals the answer (thousands separators ignored): the usual check
    for worked math answers, which may show their steps but must end on the result."""
    def value(text: str) -> float | None:
        found = NUMBER.findall(str(text).replace(",", ""))
        return float(found[-1]) if found else None

    def score(prompts, completions, completion_ids, columns):
        answers = _answer_column(spec, columns)
        return [float(value(text_of(c)) is not None and value(text_of(c)) == value(a)) for c, a in zip(completions, answers)]
    return score


def _contains_answer(spec):
    def score(prompts, completions, completion_ids, columns):
        answers = _answer_column(spec, columns)
        return [float(contains_whole(text_of(c), str(a), spec.ignore_case)) for c, a in zip(completions, answers)]
    return score


def _regex(spec):
    pattern = re.compile(spec.pattern, re.DOTALL)  # validated when the recipe loaded
    return lambda prompts, completions, ids, columns: [float(pattern.fullmatch(text_of(c).strip()) is not None)
                                                        for c in completions]


def _within(count: int, limit: int) -> float:
    """1.0 up to the limit, then linearly down to 0.0 at twice the limit: a gradient, not a cliff."""
    return max(0.0, min(1.0, 2.0 - count / limit))


def _max_words(spec):
    return lambda prompts, completions, ids, columns: [_within(len(text_of(c).split()), spec.limit) for c in completions]


def _max_tokens(spec):
    return lambda prompts, completions, ids, columns: [_within(len(i), spec.limit) for i in ids]


def _json_valid(spec):
    def one(text: str) -> float:
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
        try:
            value = json.loads(text)
        except ValueError:
            return 0.0
        if spec.keys and not (isinstance(value, dict) and all(key in value for key in spec.keys)):
            return 0.5
        return 1.0
    return lambda prompts, completions, ids, columns: [one(text_of(c)) for c in completions]


_BUILTINS = {"exact_answer": _exact_answer, "final_number": _final_number, "contains_answer": _contains_answer, "regex": _regex,
             "max_words": _max_words, "max_tokens": _max_tokens, "json_valid": _json_valid}


def score_answers(rewards: list, weights: list[float], rows: list[dict], answers: list[tuple[str, bool]],
                  tokenizer, state) -> tuple[list[float | None], dict[str, float]]:
    """Each (text, finished) answer's weighted reward (None when every reward skipped it, which TRL leaves out
    of its means), and each reward's mean: the held-out answers scored as TRL scores sampled completions.
    `state`: the trainer's TrainerState, which TRL hands every reward as trainer_state."""
    if not rows:
        return [], {}
    prompts = [row["prompt"] for row in rows]
    completions = [[{"role": "assistant", "content": text}] for text, _ in answers]
    # TRL's completion_ids keep the end token a finished completion stopped at, so max_tokens counts it
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * finished
           for text, finished in answers]
    columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
    # what TRL adds to every reward call, so a function that reads them works here too; what it logs is dropped
    columns |= {"trainer_state": state, "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}
    values = [reward(prompts, completions, ids, **columns) for reward in rewards]
    totals = []
    for per_answer in zip(*values):  # TRL makes an answer every reward skipped NaN, not 0, and leaves it out
        scored = [w * v for w, v in zip(weights, per_answer) if v is not None]
        totals.append(sum(scored) if scored else None)
    means = {}
    for reward, column in zip(rewards, values):
        scored = [v for v in column if v is not None]
        means[reward.__name__] = sum(scored) / len(scored) if scored else float("nan")
    return totals, means


def mean(values: list[float | None]) -> float | None:
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else None
