"""Adapters trained once per session on the tiny model (a few steps: enough to move the logits), and a
multi-shard copy of the tiny base."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_recipe

ADAPTERS = {
    "lora": ({"method": "lora"}, {}),
    "rslora": ({"method": "rslora"}, {}),
    "dora": ({"method": "dora"}, {}),
    "qlora": ({"method": "lora"}, {"quantization": "nf4"}),
}


@pytest.fixture(scope="session")
def trained(tiny_model, tmp_path_factory):
    """trained(name) -> a `tune run` output dir for one of ADAPTERS, built on first use."""
    from tune import recipe as recipe_io
    from tune.train.sft import train

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            adapter, model = ADAPTERS[name]
            folder = tmp_path_factory.mktemp(f"run-{name}")
            path = write_recipe(folder / "r.yaml", adapter=adapter, model=model, train={"max_steps": 3})
            train(recipe_io.load(path), path, echo=lambda line: None)
            made[name] = folder / "out"
        return made[name]

    return get


@pytest.fixture(scope="session")
def sharded_base(tiny_model, tmp_path_factory) -> Path:
    """The tiny model re-saved in ~100 KB safetensors shards (with its tokenizer and configs)."""
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("sharded") / "tiny-sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(folder, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(tiny_model / name, folder / name)
    return folder

