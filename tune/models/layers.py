"""The layers a base model has, read from its files without loading it (config.json and the safetensors
headers: a few kilobytes, no torch), so `tune validate` can say what the adapter section will meet:
target modules that match no layer, and a rank too large for the layers it adapts."""

from __future__ import annotations

import json
from pathlib import Path

from tune.errors import TuneError
from tune.models.resolve import resolve_model
from tune.output import listed

EMBEDDINGS = ("embed", "wte", "wpe", "lm_head")  # 2-D weights that `all-linear` leaves alone


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """{module name: weight shape} of every 2-D `.weight` in the checkpoint's safetensors files."""
    return {key.removesuffix(".weight"): shape for key, shape in tensor_shapes(folder).items()
            if key.endswith(".weight") and len(shape) == 2}


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of every floating-point tensor in the checkpoint's safetensors headers."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    shapes = {}
    for name in files:
        with (folder / name).open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length)) if 0 < length < (100 << 20) else {}
        for key, entry in header.items():
            if isinstance(entry, dict) and entry.get("dtype") in ("F64", "F32", "F16", "BF16"):
                shapes[key] = tuple(entry.get("shape", ()))
    return shapes


def coverage_line(recipe) -> str | None:
    """What `all-linear` will adapt on an MoE base, counted from the checkpoint's headers, for `tune
    validate`: attention and MLP layers, expert tensors, and whether the router is in (adapter.target_router)."""
    from tune.models.targets import HEADS, ROUTERS, coverage_phrase, layer_kind

    if recipe.adapter.target_modules != "all-linear":
        return None
    try:
        folder = Path(resolve_model(recipe.model.name))
        shapes = tensor_shapes(folder) if folder.is_dir() else {}
    except (TuneError, OSError, ValueError, KeyError):
        return None
    if not any(".experts." in name or len(shape) == 3 for name, shape in shapes.items()):
        return None  # a dense base: PEFT's all-linear, as validated above
    counts: dict[str, int] = {}
    for name, shape in shapes.items():  # experts on disk: one 2-D weight per expert, or fused 3-D tensors
        module = name.removesuffix(".weight")
        leaf = module.rpartition(".")[2]
        if len(shape) < 2 or leaf in HEADS or any(word in name for word in EMBEDDINGS[:3]):
            continue
        if leaf in ROUTERS and not recipe.adapter.target_router:
            continue
        kind = layer_kind(module)
        counts[kind] = counts.get(kind, 0) + 1
    return f"adapter: all-linear covers {coverage_phrase(counts, recipe.adapter.target_router, 'weight tensors')}"


def adapter_findings(recipe) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the adapter section against the base's layers; nothing when the base is
    not a local folder yet (a hub id, a GGUF not converted)."""
    try:
        folder = Path(resolve_model(recipe.model.name))
    except TuneError:
        return [], []  # model_problems says why
    if not folder.is_dir():
        return [], []
    config = folder / "config.json"
    if config.is_file() and "quantization_config" in json.loads(config.read_text(encoding="utf-8")):
        return [], []  # packed integer weights (bnb, GPTQ, AWQ) do not show the layers' shapes or names
    try:
        shapes = weight_shapes(folder)
    except (OSError, ValueError, KeyError):
        return [], []  # a damaged checkpoint is the loader's to report
    if not shapes:
        return [], []
    adapter, problems = recipe.adapter, []
    if adapter.target_modules == "all-linear":
        from tune.models.targets import ROUTERS

        chosen = {name: shape for name, shape in shapes.items() if not any(word in name for word in EMBEDDINGS)
                  and (adapter.target_router or name.rpartition(".")[2] not in ROUTERS)}
    elif isinstance(adapter.target_modules, list):
        chosen = {}
        for target in adapter.target_modules:
            found = {name: shape for name, shape in shapes.items() if name == target or name.endswith(f".{target}")}
            if not found:
                names = sorted({name.rsplit(".", 1)[-1] for name in shapes})
                problems.append(f"adapter.target_modules: '{target}' matches no layer of {recipe.model.name} "
                                f"(its layers are named {listed(names)})")
            chosen |= found
    else:
        return [], []  # a regular expression: PEFT matches it against the built model
    warnings = []
    # A rank-r adapter on an (out x in) layer has r * (in + out) parameters: past in*out / (in + out) it
    # has more than the layer itself and can learn nothing a full update could not.
    too_large = [(name, shape) for name, shape in chosen.items()
                 if adapter.r * (shape[0] + shape[1]) > shape[0] * shape[1]]
    if too_large:
        name, (rows, columns) = min(too_large, key=lambda item: item[1][0] * item[1][1])
        warnings.append(f"adapter.r: {adapter.r} gives {len(too_large)} layers (e.g. {name}, {rows}x{columns}) more "
                        f"adapter parameters than the layer has; above r={rows * columns // (rows + columns)} a "
                        "higher rank only costs memory")
    return problems, warnings
