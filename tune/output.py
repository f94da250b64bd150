"""The output dir: one writer at a time, never clobber what tune did not write, write every file
atomically (temp file, then rename), and record what is needed to reproduce the run: resolved recipe,
package versions, data fingerprint. Also how a long list is shown in a printed line."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
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


RUN_RECORDS = ("recipe.yaml", "versions.json")  # the first files every `tune run` writes
EXPORT_RECORD = "export.json"  # what `tune merge` and `tune export` write beside their result


@contextmanager
def exclusive(folder: Path, key: str = "output.dir"):
    """One writer per output dir: an OS lock (flock) on a file beside it, held for the whole command. The
    OS drops the lock when its process dies, so a killed run never blocks the next; the file holds the
    holder's pid for the message the second writer gets."""
    import fcntl

    folder = Path(folder).resolve()  # one lock per real folder, whatever path or link names it
    path = folder.parent / f".{folder.name}.tune-lock"
    created = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
    while True:
        try:
            if not folder.parent.exists():
                folder.parent.mkdir(parents=True)
            handle = open(path, "a+", encoding="utf-8")
        except OSError as exc:
            again = "with --set output.dir=..." if key == "output.dir" else key
            raise TuneError(f"{key}: cannot write to {folder}: {exc.strerror or exc}; choose another {again}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise TuneError(f"{key}: {folder} is being written by another tune process (pid {holder}); wait for "
                            "it to finish, or choose another dir") from None
        try:  # the holder may have removed the file between our open and lock: then lock the new one
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # removed while still locked, then released
        handle.close()
        for parent in created:  # deepest first: folders made only to hold the lock, if nothing else went in
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


def written_by_tune(folder: Path) -> bool:
    return all((folder / name).is_file() for name in RUN_RECORDS) or (folder / EXPORT_RECORD).is_file()


def check_replaceable(folder: Path, inputs: dict[str, Path], key: str, overwrite: bool) -> None:
    """Refuse an output dir that is, holds or sits inside one of the command's inputs (the data, the base
    model, the source run); with overwrite, also one that tune did not write, or that holds other runs.
    --overwrite may only ever delete tune's own earlier output."""
    folder = Path(folder).resolve()
    for what, path in inputs.items():
        path = Path(path).resolve()
        if path == folder or folder in path.parents or path in folder.parents:
            where = "is" if path == folder else "holds" if folder in path.parents else "is inside"
            raise TuneError(f"{key}: {folder} {where} {what} ({path}); write the output somewhere else")
    if not overwrite or not folder.is_dir() or not any(folder.iterdir()):
        return
    if not written_by_tune(folder):
        raise TuneError(f"{key}: {folder} was not written by tune (it has neither {' and '.join(RUN_RECORDS)} nor "
                        f"{EXPORT_RECORD}), so --overwrite will not delete it; choose another dir")
    nested = sorted(p.parent for name in (*RUN_RECORDS[:1], EXPORT_RECORD) for p in folder.rglob(name)
                    if p.parent != folder and written_by_tune(p.parent))
    if nested:
        raise TuneError(f"{key}: {folder} holds another tune output ({nested[0]}), which --overwrite would delete; "
                        "choose another dir")


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


def listed(items, limit: int = 12) -> str:
    """Items joined by commas, the first `limit` of them and how many more: a classifier's 20,000 labels once
    made one printed line of 188,932 characters."""
    items = [str(item) for item in items]
    more = f", ... ({len(items) - limit:,} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def file_sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks (multi-GB GGUFs and sdists never sit in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
