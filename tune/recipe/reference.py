"""The recipe reference, generated from the pydantic models: `tune schema` prints it and a test keeps
the copy in docs/recipes.md in sync."""

from __future__ import annotations

import json
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tune.recipe import Recipe


def json_schema() -> str:
    return json.dumps(Recipe.model_json_schema(), indent=2)


def markdown_reference() -> str:
    from tune.recipe.rewards import RewardFunction

    lines = []
    for section, field in Recipe.model_fields.items():
        # an optional section (reward) is its model or null
        model: type[BaseModel] = next(t for t in typing.get_args(field.annotation) or [field.annotation]
                                      if t is not type(None))
        lines += _table(f"`{section}`", field.description, section, model)
        if section == "reward":
            lines += _table("`reward.functions` entries", "A built-in by name, or a mapping with its options:",
                            "", RewardFunction)
    return "\n".join(lines).rstrip() + "\n"


def _table(title: str, description: str, prefix: str, model: type[BaseModel]) -> list[str]:
    lines = [f"### {title}", "", description, "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, sub in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        lines.append(f"| `{key}` | {_type_name(sub.annotation)} | {_default(sub)} | {sub.description} |")
    return lines + [""]


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory else field.default
    return f"`{json.dumps(value)}`"
