"""A `tune run` output dir read back: PEFT adapter config, resolved recipe and the base model it names
(what DPO continues from, and what merge and export start from). Every problem is found here, before
anything heavy is loaded.

A run dir may come from someone else, and its recipe.yaml with it: the model.trust_remote_code and
model.allow_pickle it sets (both run code when the base loads) count only when the command using the run
dir grants them too (--trust-remote-code, --allow-pickle). A grant never turns on what the recipe did not
ask for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from tune.errors import TuneError
from tune.models.gguf import gguf_path, hf_folder
from tune.models.resolve import PACKAGED_GGUF, built_on_first_use, looks_local, resolve_model

SUPPORTED_PEFT = ("LORA",)  # LoRA, rsLoRA and DoRA all save as peft_type LORA
GRANT_FLAGS = {"trust_remote_code": "--trust-remote-code", "allow_pickle": "--allow-pickle"}


def grants(trust_remote_code: bool = False, allow_pickle: bool = False) -> frozenset[str]:
    """What a command's --trust-remote-code and --allow-pickle let a run dir's recipe.yaml do."""
    return frozenset(flag for flag, given in (("trust_remote_code", trust_remote_code),
                                              ("allow_pickle", allow_pickle)) if given)


def refuse_ungranted(recipe, recipe_path: Path, granted: frozenset[str] | None,
                     flags: tuple[str, ...] = tuple(GRANT_FLAGS)) -> None:
    """One line unless every one of `flags` the recipe sets is in `granted`. granted=None: no flag of this
    command can grant them (a GRPO recipe's reward.model is loaded inside `tune run`)."""
    model = recipe.get("model") if isinstance(recipe, dict) else None
    model = model if isinstance(model, dict) else {}
    refused = [flag for flag in flags if model.get(flag) is True and flag not in (granted or ())]
    if not refused:
        return
    settings = " and ".join(f"model.{flag}: true" for flag in refused)
    remedy = ("retrain it without" if granted is None else
              f"pass {' '.join(GRANT_FLAGS[flag] for flag in refused)} if you trust where this run dir and its "
              "base came from")
    raise TuneError(f"{recipe_path}: {settings} would run code from its base ({model.get('name')}) when loaded "
                    f"here; {remedy}")


@dataclass
class AdapterRun:
    path: Path
    config: dict  # adapter_config.json
    recipe: dict  # recipe.yaml as written by the run ({} when absent and --base was given)
    base: str  # a local folder or a hub id
    revision: str | None
    trust_remote_code: bool

    @property
    def method(self) -> str:
        if self.config.get("use_dora"):
            return "dora"
        return "rslora" if self.config.get("use_rslora") else "lora"

    @property
    def base_name(self) -> str:
        """The base as the user named it (a hub id or short name), for model cards."""
        return str(self.recipe.get("model", {}).get("name") or self.base)

    @property
    def labels(self) -> list[str] | None:
        """A classifier's label names (classify and reward runs: one label, "reward"), or None for a causal LM."""
        path = self.path / "labels.json"
        return json.loads(path.read_text(encoding="utf-8"))["labels"] if path.is_file() else None

    @property
    def quantized(self) -> bool:
        return self.recipe.get("model", {}).get("quantization", "none") != "none"


def read_adapter_dir(path: Path, base: str | None = None, echo=None,
                     granted: frozenset[str] = frozenset()) -> AdapterRun:
    """The run dir at `path`; `base` overrides the base model its recipe names. `echo` hears about a GGUF
    base being converted or built. `granted`: see refuse_ungranted; only trust_remote_code counts, because merge and
    export load safetensors only."""
    path = Path(path)
    if not path.is_dir():
        raise TuneError(f"{path}: no such folder")
    if not (path / "adapter_config.json").is_file():
        raise TuneError(f"{path}: not an adapter dir: no adapter_config.json (give the output dir of `tune run`)")
    problems = []
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TuneError(f"{path / 'adapter_config.json'}: not valid JSON: {exc}") from None
    if config.get("peft_type") not in SUPPORTED_PEFT:
        problems.append(f"{path / 'adapter_config.json'}: peft_type {config.get('peft_type')!r} is not supported "
                        "(LoRA, rsLoRA and DoRA adapters are)")
    if not (path / "adapter_model.safetensors").is_file():
        pickle = (path / "adapter_model.bin").is_file()
        # A .bin adapter is a pickle that can run code when loaded; tune reads safetensors only.
        problems.append(f"{path}: no adapter_model.safetensors" + (
            " (adapter_model.bin is a pickle, which tune never loads; re-save it with safe_serialization=True)"
            if pickle else ""))
    else:
        check_safetensors(path / "adapter_model.safetensors")
    recipe = {}
    if (path / "recipe.yaml").is_file():
        try:
            recipe = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            problems.append(f"{path / 'recipe.yaml'}: not valid YAML: {str(exc).splitlines()[0]}")
    elif base is None:
        problems.append(f"{path}: no recipe.yaml, so the base model is unknown; name it with --base")
    if problems:
        raise TuneError(problems)
    refuse_ungranted(recipe, path / "recipe.yaml", granted, ("trust_remote_code",))

    model = recipe.get("model", {}) if isinstance(recipe, dict) else {}
    name = base or model.get("name")
    if not name:
        raise TuneError(f"{path / 'recipe.yaml'}: model.name is missing; name the base with --base")
    source = built_on_first_use(resolve_model(str(name)), echo)
    gguf = gguf_path(source, None if base else model.get("gguf_file"))
    if gguf is not None:  # a GGUF base: the folder it was converted into (converting it if needed)
        source = str(hf_folder(gguf, name if name in PACKAGED_GGUF else None,
                               echo=echo))
    if looks_local(source) and not Path(source).expanduser().exists():
        raise TuneError(f"{'--base' if base else 'model.name'}: no such folder: {name}")
    return AdapterRun(path=path, config=config, recipe=recipe if isinstance(recipe, dict) else {}, base=source,
                      revision=None if base else model.get("revision"),
                      trust_remote_code=bool(model.get("trust_remote_code", False)))


def base_config(run: AdapterRun) -> dict:
    """The base's config.json (local folder, or fetched from the hub into the HF cache)."""
    local = Path(run.base) / "config.json"
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(run.base, revision=run.revision,
                                          trust_remote_code=run.trust_remote_code).to_dict()
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TuneError(f"model.name: cannot load the config of '{run.base}': {first[:300]}") from None


def checkpoint_files(base: str) -> list[Path] | None:
    """The safetensors shards of a local checkpoint, in index order; None when it is not one."""
    folder = Path(base)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else None


def run_recipe(model_dir: Path, granted: frozenset[str] | None = frozenset()):
    """The resolved recipe an adapter dir was trained with, or None for a plain model folder. `granted`:
    see refuse_ungranted."""
    from tune.recipe import load, read_yaml

    path = Path(model_dir) / "recipe.yaml"
    if not path.is_file():
        return None
    refuse_ungranted(read_yaml(path)[0], path, granted)
    return load(path)


def check_fits_base(adapter_dir: Path, model_name: str, source: str) -> None:
    """`model.adapter`: a run dir whose adapter training continues must have been trained on this base."""
    try:  # only the run's base name is read: the base loads under this recipe's own model section
        run = read_adapter_dir(adapter_dir, granted=frozenset(GRANT_FLAGS))
    except TuneError as exc:
        raise TuneError([f"model.adapter: {problem}" for problem in exc.problems]) from None
    if run.base != source:
        raise TuneError(f"model.adapter: {adapter_dir} was trained on {run.base_name}, but model.name is "
                        f"{model_name}; an adapter only fits the base it was trained on")


def check_safetensors(path: Path, what: str = "adapter file") -> None:
    """One line unless `path` is a whole safetensors file: its header parses and every tensor it lists lies
    inside the file (a copy cut short, or an empty file, fails here, not as a SafetensorError traceback)."""
    if not path.is_file():
        raise TuneError(f"{path.parent}: no {path.name} (an interrupted copy? an adapter_model.bin is a pickle, which "
                        "tune never loads)")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        problem = "the file is empty" if size == 0 else None
        if problem is None and not 0 < length <= min(size - 8, 100 << 20):
            problem = "no valid safetensors header"
        if problem is None:
            try:
                header = json.loads(handle.read(length))
                end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                header, problem = None, "its header is not valid safetensors JSON"
            else:
                if 8 + length + end > size:
                    problem = f"cut short: {size} of {8 + length + end} bytes"
    if problem:
        raise TuneError(f"{path}: damaged {what} ({problem}); train again, or copy the run dir again")
