"""`tune merge` and `tune export`: the deploy stage's commands. They parse, call tune.export.pipeline and
print; heavy libraries are imported only when a command runs, so `tune --help` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer

from tune.cli.console import fail, say
from tune.cli.use import TRUST_REMOTE_CODE
from tune.errors import TuneError

DTYPE_HELP = "Weights of the result: auto (as the base is stored), bfloat16, float16 or float32."
BASE_HELP = "Base model to merge into, instead of the one the adapter's recipe.yaml names."


def merge(adapter_dir: Path = typer.Argument(help="A `tune run` output dir (adapter + recipe.yaml)."),
          out_dir: Path = typer.Argument(help="Folder to write the merged model to (must not exist or be empty)."),
          dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
          shard_size: str = typer.Option("2GB", "--shard-size", help="Largest safetensors shard, e.g. 2GB, 500MB."),
          base: str = typer.Option(None, "--base", help=BASE_HELP),
          verify: bool = typer.Option(True, "--verify/--no-verify",
                                      help="Compare the result's logits with base+adapter; fail when they differ."),
          in_memory: bool = typer.Option(False, "--in-memory",
                                         help="Merge with PEFT in memory even when shard streaming is possible."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT_DIR."),
          trust_remote_code: bool = TRUST_REMOTE_CODE) -> None:
    """Merge the adapter into its base: sharded safetensors + tokenizer, chat template, model card."""
    from tune.export import pipeline
    from tune.models.run_dir import grants

    try:
        pipeline.merge(adapter_dir, out_dir, dtype, shard_size, base, verify, in_memory, overwrite, say,
                       grants(trust_remote_code))
    except TuneError as exc:
        fail(exc)
    say(f"merged model in {out_dir}")


def export(adapter_dir: Path = typer.Argument(help="A `tune run` output dir (adapter + recipe.yaml)."),
           out: Path = typer.Argument(help="Folder to write (must not exist or be empty)."),
           fmt: str = typer.Option(..., "--format", "-f",
                                   help="adapter (clean PEFT dir for vLLM/TGI/LoRAX), merged (safetensors) "
                                        "or gguf (llama.cpp/Ollama)."),
           quant: str = typer.Option("f16", "--quant", help="gguf only: f16, bf16 or q8_0."),
           dtype: str = typer.Option("auto", "--dtype", help="merged only: " + DTYPE_HELP),
           shard_size: str = typer.Option("2GB", "--shard-size", help="merged only: largest shard, e.g. 2GB."),
           base: str = typer.Option(None, "--base", help=BASE_HELP),
           verify: bool = typer.Option(True, "--verify/--no-verify",
                                       help="Check the result against base+adapter; fail when it differs."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
           converter: str = typer.Option("auto", "--converter",
                                         help="gguf only: auto (tune's writer for Llama/Mistral/Qwen2 with a "
                                              "byte-level BPE tokenizer, else llama.cpp's converter, fetched "
                                              "once), tune or llama.cpp."),
           trust_remote_code: bool = TRUST_REMOTE_CODE) -> None:
    """Export for deployment: a PEFT adapter, a merged model, or a GGUF file with an Ollama Modelfile."""
    from tune.export import pipeline
    from tune.models.run_dir import grants

    try:
        pipeline.export(adapter_dir, out, fmt, quant, dtype, shard_size, base, verify, overwrite, say,
                        grants(trust_remote_code), converter)
    except TuneError as exc:
        fail(exc)
    say(f"{fmt} export in {out}")
