"""Where things live: bundled recipes and data, the TUNE_HOME model cache, and how relative paths in a
recipe are resolved (recipe's folder, then the working dir, then the bundled files)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """`recipes` or `data_templates`: inside the wheel under tune/_bundled, or the repo root when editable."""
    installed = PACKAGE_DIR / "_bundled" / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


def tune_home() -> Path:
    if os.environ.get("TUNE_HOME"):
        return Path(os.environ["TUNE_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tune"


def models_dir() -> Path:
    return tune_home() / "models"


def find_file(name: str, recipe_dir: Path | None) -> Path | None:
    """A relative data or template path, looked up beside the recipe, then in the working dir, then in
    the bundled files (so a recipe copied with `tune cp` still finds the sample data it names)."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    candidates = [recipe_dir / path] if recipe_dir else []
    candidates += [Path.cwd() / path, bundled_dir("recipes").parent / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    return None


def find_regular_file(name: str, recipe_dir: Path | None) -> Path | None:
    """find_file, for a name that must be a file (a config), not a folder."""
    found = find_file(name, recipe_dir)
    return found if found is not None and found.is_file() else None
