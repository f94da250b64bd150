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


def resolve_model(name: str) -> str:
    """A local folder, a model in TUNE_HOME/models (built by `tune init-tiny`), or else a hub id as given."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    cached = models_dir() / name
    if cached.is_dir():
        return str(cached)
    return name


def looks_local(name: str) -> bool:
    """True when `name` can only mean a path (so a missing one is an error, not a hub lookup)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith((".gguf", ".safetensors"))
