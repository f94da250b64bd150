"""`tune quickstart`: the offline demo, end to end, through the same commands a user types."""

from __future__ import annotations

from pathlib import Path

import typer

from tune.cli.console import out


def quickstart(dest: Path = typer.Option(Path("runs/quickstart"), "--dir", help="Output dir of the run.")) -> None:
    """Offline demo: build the tiny model, fine-tune it, merge, export GGUF, and answer prompts."""
    from tune.cli.export import export, merge
    from tune.cli.models import init_tiny
    from tune.cli.recipes import bundled_recipes
    from tune.cli.run import run
    from tune.cli.use import generate

    init_tiny(None, hidden_size=256, layers=4, force=False)
    run(None, bundled_recipes()["quickstart"], overrides=[f"output.dir={dest}"], overwrite=True, resume=False,
        allow_data_change=False, nproc=None)
    merged, gguf = Path(f"{dest}-merged"), Path(f"{dest}-gguf")
    for step in (f"\n$ tune merge {dest} {merged}", f"\n$ tune export {dest} {gguf} --format gguf --quant q8_0"):
        out.print(step, markup=False)
        if "merge" in step:
            merge(dest, merged, dtype="auto", shard_size="2GB", base=None, verify=True, in_memory=False, overwrite=True,
                  trust_remote_code=False)
        else:
            export(dest, gguf, fmt="gguf", quant="q8_0", dtype="auto", shard_size="2GB", base=None, verify=True,
                   overwrite=True, converter="auto", trust_remote_code=False)
    for question in QUICKSTART_PROMPTS:
        out.print(f"\n$ tune generate {merged} --prompt {question!r}", markup=False)
        generate(merged, prompt=question, data=None, out_file=None, system=None, max_new_tokens=24, temperature=0.0,
                 top_k=50, top_p=1.0, seed=0, trust_remote_code=False, allow_pickle=False)


QUICKSTART_PROMPTS = ("What is the capital of France?", "What is 7 plus 8?")
