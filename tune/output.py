"""The output dir: refuse to clobber, write every file atomically (temp file, then rename), and record
what is needed to reproduce the run: resolved recipe, package versions, data fingerprint."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from tune.errors import TuneError

PACKAGES = ("tune-peft", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
            "tokenizers", "safetensors", "pydantic")


def check_writable(path: Path) -> None:
    """Prove output.dir can be created and written without leaving anything behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TuneError(f"output.dir: {path} is a file, not a folder; choose another with --set output.dir=...")
    missing = []
    probe_dir = path
    while not probe_dir.exists():
        missing.append(probe_dir)
        probe_dir = probe_dir.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-").close()
    except OSError as exc:
        raise TuneError(f"output.dir: cannot write to {path}: {exc.strerror or exc}; "
                        "choose another with --set output.dir=...") from None
    finally:
        for created in missing:  # deepest first
            if created.is_dir() and not any(created.iterdir()):
                created.rmdir()


def clear_dir(path: Path) -> None:
    """--overwrite: remove the old run's files so nothing stale mixes with the new one."""
    for item in Path(path).iterdir():
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                         encoding="utf-8")
    try:
        with handle:
            handle.write(text)
        os.chmod(handle.name, 0o666 & ~_umask())  # NamedTemporaryFile makes 0600 files
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def move_into(staging: Path, out_dir: Path) -> None:
    """Move every file of a finished staging folder into the output dir (each a rename)."""
    for item in staging.iterdir():
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def versions() -> dict:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def save_png(figure, path: Path) -> Path:
    """Write a matplotlib figure atomically (temp file, then rename) and release it."""
    import matplotlib.pyplot as plt

    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temp, format="png")
        os.replace(temp, path)
    finally:
        plt.close(figure)
        Path(temp).unlink(missing_ok=True)
    return path
