"""Getting llama.cpp's converter: the pinned sdist is checked by sha256 before anything is kept, a folder
or file named by TUNE_LLAMA_CPP is used as it is, and without a cache or a reachable index the command
says in one line what to run."""

import io
import tarfile

import pytest

from tune.errors import TuneError
from tune.export import llama_cpp


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(llama_cpp.ENV, raising=False)
    return tmp_path / "home"


def test_the_cached_converter_is_the_pinned_one(llama_cpp_tree):
    import json

    assert llama_cpp.is_tree(llama_cpp_tree)
    if (llama_cpp_tree / llama_cpp.RECORD).is_file():  # fetched or extracted by tune (not a checkout)
        record = json.loads((llama_cpp_tree / llama_cpp.RECORD).read_text())
        assert record["sha256"] == llama_cpp.SDIST_SHA256 and record["llama_cpp_commit"] == "0c1e57098"
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
            "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"} <= llama_cpp.architectures(llama_cpp_tree)


def test_an_sdist_that_is_not_the_pinned_one_is_refused(empty_home, tmp_path, monkeypatch):
    fake = tmp_path / llama_cpp.SDIST
    with tarfile.open(fake, "w:gz") as archive:
        data = b"print('not llama.cpp')\n"
        info = tarfile.TarInfo(f"llama_cpp_python-{llama_cpp.VERSION}/vendor/llama.cpp/convert_hf_to_gguf.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    monkeypatch.setenv(llama_cpp.ENV, str(fake))
    with pytest.raises(TuneError, match=r"sha256 \w+\.\.\. is not llama-cpp-python 0\.3\.36's"):
        llama_cpp.locate(echo=lambda line: None)
    assert not llama_cpp.cache_dir().exists()


def test_env_naming_nothing_usable_is_one_line(empty_home, tmp_path, monkeypatch):
    monkeypatch.setenv(llama_cpp.ENV, str(tmp_path))
    with pytest.raises(TuneError, match=r"^TUNE_LLAMA_CPP=.*: not a llama.cpp checkout"):
        llama_cpp.locate(echo=lambda line: None)
    monkeypatch.setenv(llama_cpp.ENV, str(tmp_path / "nothing"))
    with pytest.raises(TuneError, match=r"no such folder or file$"):
        llama_cpp.locate(echo=lambda line: None)


def test_no_cache_and_no_index_says_what_to_run(empty_home, monkeypatch):
    with pytest.raises(TuneError) as caught:
        llama_cpp.locate(echo=lambda line: None, fetch=False)
    assert str(caught.value).endswith(
        "run `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d DIR` where a package index is "
        "reachable, then set TUNE_LLAMA_CPP=DIR/llama_cpp_python-0.3.36.tar.gz (or TUNE_LLAMA_CPP=a llama.cpp checkout)")
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1",
                       "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TuneError) as caught:
        llama_cpp.locate(echo=lambda line: None)
    assert str(caught.value).startswith("gguf: pip could not fetch llama-cpp-python==0.3.36 (")
    assert "then set TUNE_LLAMA_CPP=" in str(caught.value) and "\n" not in str(caught.value)
