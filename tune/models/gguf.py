"""A GGUF file as a base model. transformers can load a GGUF (dequantized to float), but that takes
~20 s every time and the loaded model refuses `save_pretrained`; so a GGUF is converted once into a
normal Hugging Face folder (config, safetensors, tokenizer with its chat template) in TUNE_HOME and
every later load, merge and export reads that folder.

Nothing heavy is imported at module level: `tune validate` checks GGUF paths without torch."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tune.errors import TuneError
from tune.output import file_sha256
from tune.paths import models_dir

GGUF_MAGIC = b"GGUF"
SOURCE_RECORD = "tune-gguf-source.json"  # written last: a folder without it is an unfinished conversion


def check_gguf(path: Path, key: str = "model.name") -> None:
    """One line (TuneError) unless `path` is a readable GGUF file."""
    if not path.is_file():
        raise TuneError(f"{key}: no such GGUF file: {path}")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise TuneError(f"{key}: {path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                        "name a .gguf file written by llama.cpp or `tune export --format gguf`, or a model folder")


def gguf_path(source: str, gguf_file: str | None) -> Path | None:
    """The GGUF file a resolved model source points at, or None for an ordinary model."""
    if gguf_file:
        return Path(source).expanduser() / gguf_file
    if source.endswith(".gguf"):
        return Path(source).expanduser()
    return None


def converted_folder(gguf: Path, short_name: str | None = None) -> Path:
    """Where the conversion of `gguf` lives: TUNE_HOME/models/<short name>, or gguf/<stem>-<key> where
    the key changes when the file does (path, size, modification time)."""
    if short_name:
        return models_dir() / short_name
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return models_dir() / "gguf" / f"{gguf.stem}-{key}"


def is_converted(folder: Path) -> bool:
    return (folder / SOURCE_RECORD).is_file() and (folder / "config.json").is_file()


def hf_folder(gguf: Path, short_name: str | None = None, echo=None, key: str = "model.name") -> Path:
    """The converted folder for `gguf`, converting it first when needed."""
    folder = converted_folder(gguf, short_name)
    if is_converted(folder):
        return folder
    check_gguf(gguf, key)
    if echo:
        echo(f"model: converting {gguf.name} into a Hugging Face folder once ({folder}); later runs reuse it")
    convert(gguf, folder)
    return folder


def convert(gguf: Path, folder: Path) -> Path:
    """Dequantize `gguf` into `folder` (float32 safetensors + tokenizer + chat template), atomically:
    built beside it and renamed into place."""
    from tune.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TuneError(f"model.name: transformers cannot load {gguf}: {first[:300]} "
                        "(supported: the GGUF architectures transformers reads, e.g. llama, mistral, qwen2)") from None
    # The loaded model carries a gguf "quantizer" that blocks save_pretrained although its weights are
    # already plain float tensors; dropping it leaves an ordinary float32 model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(gguf)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    stat = gguf.stat()
    record = {"gguf": str(gguf.resolve()), "bytes": stat.st_size, "sha256": file_sha256(gguf),
              "architecture": model.config.model_type}
    (partial / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder
