"""`tune merge` and `tune export` as library calls. Each writes into a temp dir beside OUT and renames it into
place only after the result has been verified, so OUT is either absent (or as it was) or complete."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from tune.errors import TuneError
from tune.output import EXPORT_RECORD, check_replaceable, exclusive
from tune.export import adapter as adapter_export
from tune.export.card import write_card
from tune.export.merge import DTYPES, merge as merge_weights, parse_size
from tune.models.run_dir import AdapterRun, base_config, read_adapter_dir
from tune.export.verify import VerificationError

FORMATS = ("adapter", "merged", "gguf")


@contextmanager
def staged(out: Path, overwrite: bool, run: AdapterRun):
    """A fresh temp dir beside OUT; renamed to OUT when the block finishes, deleted when it raises. Only
    one command writes OUT at a time, and OUT is never the run, the base, or anything tune did not write."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise TuneError(f"{out}: is a file, not a folder")
    inputs = {"the adapter run": run.path} | ({"the base model": Path(run.base)} if Path(run.base).is_dir() else {})
    check_replaceable(out, inputs, "OUT", overwrite)
    with exclusive(out, "OUT"):  # checked again under the lock: another export may have just finished
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise TuneError(f"{out}: is not empty; choose another OUT or pass --overwrite")
        name = glob.escape(out.name)
        for stale in [*out.parent.glob(f".{name}.partial-*"), *out.parent.glob(f".{name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed merge/export of this OUT (we hold its lock)
        with _swapped_in(out) as temp:
            yield temp


@contextmanager
def _swapped_in(out: Path):
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    for path in [temp, *temp.rglob("*")]:  # mkdtemp and safetensors make owner-only dirs and files
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}" if out.exists() else None
    if old:
        os.replace(out, old)
    os.replace(temp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def merge(adapter_dir: Path, out: Path, dtype: str = "auto", shard_size: str = "2GB", base: str | None = None,
          verify: bool = True, in_memory: bool = False, overwrite: bool = False, echo=print,
          granted: frozenset[str] = frozenset()) -> dict:
    """`granted`: what the command lets the run's recipe.yaml do (tune/models/run_dir.py refuse_ungranted)."""
    run = _checked_run(adapter_dir, base, dtype, shard_size, echo, granted)
    with staged(out, overwrite, run) as temp:
        report = _merge_verified(run, temp, dtype, shard_size, verify, in_memory, echo)
        write_card(temp, run, "merged", report, Path(out))
        _write_record(temp, report)
    return report


def export(adapter_dir: Path, out: Path, fmt: str, quant: str = "f16", dtype: str = "auto",
           shard_size: str = "2GB", base: str | None = None, verify: bool = True, overwrite: bool = False,
           echo=print, granted: frozenset[str] = frozenset(), converter: str = "auto") -> dict:
    """`converter` (gguf only): auto (tune's writer where it serves, else llama.cpp's), tune or llama.cpp."""
    from tune.export import gguf_route, to_gguf

    if fmt not in FORMATS:
        raise TuneError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if quant not in to_gguf.QUANTS:
        raise TuneError(f"--quant: {quant!r} is not one of {', '.join(to_gguf.QUANTS)}")
    run = _checked_run(adapter_dir, base, dtype, shard_size, echo, granted)
    if fmt == "merged":
        return merge(adapter_dir, out, dtype, shard_size, base, verify, False, overwrite, echo, granted)
    if fmt == "gguf" and run.labels is not None:
        raise TuneError(f"--format: gguf: {run.path} is a classifier ({run.recipe.get('train', {}).get('method')} "
                        "run) and llama.cpp runs causal language models; export it with --format adapter or merged")
    route = gguf_route.choose(base_config(run), run.path, converter, echo) if fmt == "gguf" else None
    with staged(out, overwrite, run) as temp:
        report = _export_adapter(run, temp, verify, echo) if fmt == "adapter" else \
            _export_gguf(run, temp, quant, shard_size, verify, echo, route)
        write_card(temp, run, fmt, report, Path(out))
        _write_record(temp, report)
    return report


def _checked_run(adapter_dir, base, dtype: str, shard_size: str, echo, granted: frozenset[str]) -> AdapterRun:
    """All input problems at once, before any staging or loading."""
    run = read_adapter_dir(Path(adapter_dir), base, echo, granted)
    problems = [] if dtype in DTYPES else [f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}"]
    try:
        parse_size(shard_size)
    except TuneError as exc:
        problems += exc.problems
    if problems:
        raise TuneError(problems)
    return run


def _merge_verified(run: AdapterRun, temp: Path, dtype: str, shard_size: str, verify: bool, in_memory: bool,
                    echo) -> dict:
    from tune.export.verify import reference, verify_merged
    from tune.quiet import quiet_libraries

    quiet_libraries()
    qlora = " (QLoRA adapter: merged into the 16/32-bit base, not the 4-bit weights)" if run.quantized else ""
    echo(f"merge: {run.method} adapter {run.path} into {run.base}{qlora}")
    report = merge_weights(run, temp, dtype, shard_size, in_memory)
    how = f"streamed shard by shard ({report['merged_weights']} weights merged)" if report["method"] == "streamed" \
        else f"in memory with PEFT ({report['why_in_memory']})"
    echo(f"merge: {how}; {report['shards']} shard(s), {report['dtype']}")
    report["verification"] = []
    if not verify:
        echo("verify: skipped (--no-verify)")
        return report
    ref = reference(run)
    check = verify_merged(temp, ref, report["dtype"])
    echo(check.line())
    report["verification"].append(check.as_dict())
    if not check.ok:
        raise VerificationError(f"{check.line()}; the merge was not written")
    report["_reference"] = ref
    return report


def _export_adapter(run: AdapterRun, temp: Path, verify: bool, echo) -> dict:
    adapter_export.copy_adapter(run, temp)
    serving = adapter_export.compatibility(run.config)
    adapter_export.write_report(temp, serving)
    for line in adapter_export.lines(serving):
        echo(line)
    report = {"format": "adapter", "serving": serving, "verification": []}
    if verify:  # the copy must load with plain PEFT and give the run's logits
        from tune.export.verify import compare, reference
        from tune.quiet import quiet_libraries

        quiet_libraries()
        ref = reference(run)
        copied = reference(AdapterRun(temp, run.config, run.recipe, run.base, run.revision, run.trust_remote_code))
        check = compare("adapter (reloaded with PEFT)", copied.adapted, ref, "float32")
        echo(check.line())
        report["verification"].append(check.as_dict())
        if not check.ok:
            raise VerificationError(f"{check.line()}; the export was not written")
    else:
        echo("verify: skipped (--no-verify)")
    return report


def _export_gguf(run: AdapterRun, temp: Path, quant: str, shard_size: str, verify: bool, echo, route) -> dict:
    from transformers import AutoTokenizer

    from tune.export import gguf_route, ollama

    merged = temp / ".merged"  # the verified merge the GGUF is converted from; removed at the end
    merged.mkdir()
    report = _merge_verified(run, merged, "auto", shard_size, verify, False, echo)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    name = f"model-{quant}.gguf"
    echo(f"gguf: converting with {route.describe()}")
    report["gguf"] = gguf_route.write(route, merged, temp / name, quant, run.base_name, ollama.stop_tokens(tokenizer))
    tokenizer_kind = f", tokenizer {report['gguf']['tokenizer']}" if "tokenizer" in report["gguf"] else ""
    echo(f"gguf: {name} ({report['gguf']['architecture']}{tokenizer_kind}, tensor types {report['gguf']['tensor_types']})")
    (temp / "Modelfile").write_text(ollama.modelfile(tokenizer, name), encoding="utf-8")
    if verify:
        _verify_gguf(route, temp / name, merged, quant, tokenizer, report, echo)
    shutil.rmtree(merged)
    return report


def _verify_gguf(route, path: Path, merged: Path, quant: str, tokenizer, report: dict, echo) -> None:
    """Read the file back, then compare logits: tune's writer is checked tensor by tensor against the merged
    weights; llama.cpp's converter renames, permutes and shifts them, so its file goes through transformers'
    GGUF reader instead (which costs ~25 s on SmolLM2, so not where the tensor check exists); and through
    llama.cpp itself when llama-cpp-python is installed."""
    from tune.export import gguf_route, to_gguf
    from tune.export.verify import gguf_check, gguf_transformers_check

    if route.converter == "tune":
        readback = to_gguf.read_back(path, merged, quant)
        echo(f"verify gguf: {readback['tensors']} tensors read back, max relative weight error "
             f"{readback['max_relative_error']:.2e} (tolerance {to_gguf.READBACK_TOLERANCE[quant]:.0e})"
             + ("" if not readback["problems"] else f"; {len(readback['problems'])} problem(s)"))
    else:
        readback = gguf_route.read_back(path, merged, tokenizer)
        echo(f"verify gguf: read back {readback['tensors']} tensors, {readback['tokens']} tokens, hyper-parameters "
             "and tokenizer keys" + ("" if not readback["problems"] else f"; {len(readback['problems'])} problem(s)"))
    report["readback"] = readback
    if readback["problems"]:
        raise VerificationError([f"{path}: {problem}" for problem in readback["problems"]])
    checks = []
    if route.converter != "tune":
        logits = gguf_transformers_check(path, report["_reference"], tokenizer, merged, quant)
        if isinstance(logits, str):
            echo(f"verify gguf: transformers cannot read this GGUF back ({logits}); logits not compared there")
        else:
            checks.append(logits)
    native = gguf_check(path, report["_reference"], quant)
    for check in checks + ([native] if native is not None else []):
        echo(check.line())
        report["verification"].append(check.as_dict())
        if not check.ok:
            raise VerificationError(f"{check.line()}; the export was not written")
    if native is None:
        echo("verify gguf: llama-cpp-python is not installed; llama.cpp's own logits not compared")


def _write_record(temp: Path, report: dict) -> None:
    record = {key: value for key, value in report.items() if not key.startswith("_")}
    (temp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
