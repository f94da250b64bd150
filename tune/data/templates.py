"""Prompt templates. Every template is a Jinja chat template (messages -> text), the same kind a model
ships, so the model's own template and the bundled ones (`data_templates/templates/*.jinja`) go
through one rendering path: `tokenizer.apply_chat_template`."""

from __future__ import annotations

from pathlib import Path

from tune.errors import RecipeError
from tune.paths import bundled_dir, find_file


def builtin_templates() -> dict[str, Path]:
    folder = bundled_dir("data_templates") / "templates"
    return {path.stem: path for path in sorted(folder.glob("*.jinja"))}


def check_template_name(name: str, recipe_dir: Path | None) -> str | None:
    """A problem with `data.template` that can be seen without loading the tokenizer, or None."""
    if name in ("auto", "model") or name in builtin_templates():
        return None
    if name.endswith(".jinja"):
        return None if find_file(name, recipe_dir) else f"data.template: template file not found: {name}"
    names = ", ".join(["auto", "model", *builtin_templates()])
    return f"data.template: unknown template '{name}'; use one of {names} or a path to a .jinja file"


def resolve_template(name: str, tokenizer, recipe_dir: Path | None) -> tuple[str, str]:
    """(Jinja text, a label saying where it came from) for `data.template`."""
    problem = check_template_name(name, recipe_dir)
    if problem:
        raise RecipeError(problem)
    own = getattr(tokenizer, "chat_template", None)
    if name == "auto":
        return (own, "model") if own else (builtin_templates()["alpaca"].read_text(), "alpaca")
    if name == "model":
        if not own:
            choices = ", ".join(builtin_templates())
            raise RecipeError(f"data.template: the model has no chat template; set data.template to one of {choices}")
        return own, "model"
    if name in builtin_templates():
        return builtin_templates()[name].read_text(), name
    return find_file(name, recipe_dir).read_text(), name
