"""`tune models list` and `tune models get`: the base models this machine has without a download
(built tiny models, packaged models, converted GGUFs), and converting a GGUF once into a folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tune.cli.console import fail, out, say
from tune.errors import TuneError
from tune.paths import models_dir

models_app = typer.Typer(help="Base models available offline: list them, or convert a GGUF once (`get`).",
                         no_args_is_help=True)


@models_app.command("list")
def list_models() -> None:
    """Show the models recipes can name without a download, and where they are."""
    import importlib.util

    from rich.table import Table

    from tune.models.gguf import SOURCE_RECORD, is_converted
    from tune.models.resolve import PACKAGED_GGUF, PACKAGED_MODELS

    table = Table("model.name", "what", "status", "path")
    for name, (module, package, extra, filename) in PACKAGED_GGUF.items():
        folder = models_dir() / name
        installed = importlib.util.find_spec(module) is not None
        status = ("ready" if is_converted(folder) else
                  f"installed; `tune models get {name}` converts it once" if installed else
                  f"pip install 'tune-peft[{extra}]'")
        table.add_row(name, f"GGUF from {package}", status, str(folder) if is_converted(folder) else "")
    for name, (module, package, extra) in PACKAGED_MODELS.items():
        installed = importlib.util.find_spec(module) is not None
        table.add_row(name, f"package {package}", "ready" if installed else f"pip install 'tune-peft[{extra}]'", "")
    root = models_dir()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    folders += sorted(p for p in (root / "gguf").iterdir() if p.is_dir()) if (root / "gguf").is_dir() else []
    for folder in folders:
        if folder.name in PACKAGED_GGUF or not (folder / "config.json").is_file():
            continue
        record = folder / SOURCE_RECORD
        what = f"converted {Path(json.loads(record.read_text())['gguf']).name}" if record.is_file() else "built locally"
        name = folder.name if folder.parent == root else str(folder)
        table.add_row(name, what, "ready", str(folder))
    out.print(table)
    say(f"models folder: {root} (set TUNE_HOME to move it)")


@models_app.command("get")
def get(name: str = typer.Argument(help="smollm2-135m-instruct, or a path to any .gguf file."),
        dest: Path = typer.Argument(None, help="Folder to write (default: TUNE_HOME/models/NAME)."),
        force: bool = typer.Option(False, "--force", help="Convert again even if the folder is already there.")) -> None:
    """Convert a GGUF model into a Hugging Face folder (config, safetensors, tokenizer, chat template)."""
    import time

    from tune.models.gguf import check_gguf, convert, converted_folder, is_converted
    from tune.models.resolve import PACKAGED_GGUF, packaged_gguf

    try:
        if name in PACKAGED_GGUF:
            gguf, short_name = packaged_gguf(name), name
        elif name.endswith(".gguf") or Path(name).is_file():
            gguf, short_name = Path(name).expanduser().resolve(), None
            check_gguf(gguf, "NAME")
        else:
            known = ", ".join(PACKAGED_GGUF)
            raise TuneError(f"NAME: '{name}' is neither a known model ({known}) nor a .gguf file")
        folder = dest.resolve() if dest else converted_folder(gguf, short_name)
        if is_converted(folder) and not force:
            say(f"already converted: {folder}")
            say(str(folder))
            return
        if folder.exists() and any(folder.iterdir()) and not is_converted(folder) and not force:
            raise TuneError(f"DEST: {folder} exists and is not a converted model; choose another folder or pass --force")
        started = time.perf_counter()
        say(f"converting {gguf} ...")
        convert(gguf, folder)
    except TuneError as exc:
        fail(exc)
    say(f"converted in {time.perf_counter() - started:.0f} s; recipes can now use model.name: "
        f"{short_name if short_name and not dest else folder}")
    say(str(folder))


def init_tiny(dest: Path = typer.Argument(None, help="Folder to write; default TUNE_HOME/models/tiny-llama."),
              hidden_size: int = typer.Option(256, help="Hidden size of the random model."),
              layers: int = typer.Option(4, help="Number of decoder layers."),
              force: bool = typer.Option(False, "--force", help="Rebuild even if the folder exists.")) -> None:
    """Build a tiny random Llama model with a locally trained tokenizer and chat template (offline)."""
    from tune.models.tiny import build

    path = build(dest or models_dir() / "tiny-llama", hidden_size=hidden_size, layers=layers, overwrite=force)
    out.print(f"tiny model in {path}", markup=False)
