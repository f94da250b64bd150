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
    lines = []
    for section, field in Recipe.model_fields.items():
        model: type[BaseModel] = field.annotation
        lines += [f"### `{section}`", "", field.description, "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, sub in model.model_fields.items():
            lines.append(f"| `{section}.{name}` | {_type_name(sub.annotation)} | {_default(sub)} | "
                         f"{sub.description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


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
