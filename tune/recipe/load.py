"""Loading a recipe: YAML text -> mapping (with the line of every key) -> `--set` overrides -> a
validated `Recipe`, or a RecipeError with one `file:line: key: problem` line per problem."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tune.errors import RecipeError
from tune.recipe.schema import Recipe, did_you_mean

def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Parse, override and validate; raise RecipeError with every problem as one line."""
    path = Path(path)
    raw, lines = read_yaml(path)
    set_paths = apply_overrides(raw, overrides)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError([_describe(err, path, lines, set_paths) for err in exc.errors()]) from None
    if recipe.output.dir is None:
        recipe.output.dir = str(Path("runs") / path.stem)
    return recipe


def read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    """Return the mapping and {key path: 1-based line}. Only plain YAML data is accepted."""
    if not path.is_file():
        raise RecipeError([f"{path}: recipe file not found"])
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise RecipeError([f"{path}:{mark.line + 1}: tag {_tag_of(exc)} is not allowed: recipes hold plain data, "
                           "not Python objects"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([f"{where}: invalid YAML: {problem}"]) from None
    if data is None:
        raise RecipeError([f"{path}: recipe is empty; start from `tune cp quickstart {path.name}`"])
    if not isinstance(data, dict):
        raise RecipeError([f"{path}:1: a recipe is a mapping of sections (model, data, adapter, train, output)"])
    lines: dict[tuple, int] = {}
    _collect_lines(node, (), lines)
    return data, lines


def _tag_of(exc: yaml.constructor.ConstructorError) -> str:
    problem = exc.problem or ""
    return problem.split("tag ")[-1].strip() if "tag " in problem else "(unknown)"


def _collect_lines(node: yaml.Node, prefix: tuple, lines: dict[tuple, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines[path] = key.start_mark.line + 1
            _collect_lines(value, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            _collect_lines(item, prefix + (index,), lines)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict[tuple, str]:
    """Apply `key.path=value` strings in place; values are parsed as YAML scalars (1e-4, true, [a, b])."""
    set_paths: dict[tuple, str] = {}
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item}: expected key.path=value, e.g. --set train.learning_rate=1e-4")
            continue
        keys = tuple(key.strip().split("."))
        if not all(part.strip() for part in keys):
            problems.append(f"--set {item}: '{key}' has an empty part; write section.key=value")
            continue
        scalar = next((depth for depth in range(1, len(keys))
                       if not isinstance(_get(raw, keys[:depth]), (dict, type(None)))), None)
        if scalar is not None:
            section = ".".join(keys[:scalar])
            problems.append(f"--set {item}: {section} is a value, not a section; set it with --set {section}=...")
            continue
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):
            parsed = _number_or_str(parsed)
        node = raw
        for part in keys[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[keys[-1]] = parsed
        set_paths[keys] = item
    if problems:
        raise RecipeError(problems)
    return set_paths


def _get(raw: dict, keys: tuple):
    node = raw
    for part in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _number_or_str(text: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string; users mean the float.
    return float(text) if _FLOAT.fullmatch(text.strip()) else text


# Values people bring from other tools' docs that tune does not take, with why and what to use instead.
NOT_OFFERED = {
    ("adapter", "init", "loftq"): "LoftQ is not offered: PEFT 0.21 computes it on a CUDA or XPU device only, and its "
    "adapter belongs on the 4-bit base's dequantized weights, which tune's merge and export do not use; train "
    "QLoRA with model.quantization: nf4 (init: default), or init: pissa on an unquantized base",
}
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _describe(err: dict, path: Path, lines: dict[tuple, int], set_paths: dict[tuple, str]) -> str:
    loc = tuple(err["loc"])
    key, _, rest = err["msg"].removeprefix("Value error, ").partition(": ")
    named = tuple(key.split("."))
    if "." in key and " " not in key and named[:len(loc)] == loc:  # a section's check names the key it is about
        loc, err = named, err | {"msg": rest}
    dotted = ".".join(str(part) for part in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        choices = _fields_at(loc[:-1])
        message = f"unknown key{did_you_mean(str(loc[-1]), choices)}"
    elif err["type"] == "missing":
        message = "required key is missing"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error" and (*loc, str(err.get("input"))) in NOT_OFFERED:
            message = NOT_OFFERED[(*loc, str(err["input"]))]
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in set_paths:
            return f"--set {set_paths[loc[:depth]]}: {dotted}: {message}"
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in lines:
            return f"{path}:{lines[loc[:depth]]}: {dotted}: {message}"
    return f"{path}: {dotted}: {message}"


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def dump(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML, every default written out."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
