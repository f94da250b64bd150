"""Inference from a run's output dir (base model + adapter) or any full model folder, rendering the
prompt with the chat template the run trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tune.errors import TuneError


@dataclass
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0


def load_for_inference(model_dir: Path):
    """(model, tokenizer) from an adapter dir written by `tune run`, or from a full model folder."""
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.models import load_model
    from tune.recipe import ModelSection

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TuneError(f"{model_dir}: no such folder")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        recipe_file = model_dir / "recipe.yaml"
        if not recipe_file.is_file():
            raise TuneError(f"{model_dir}: adapter without recipe.yaml, so its base model is unknown")
        section = ModelSection.model_validate(yaml.safe_load(recipe_file.read_text())["model"])
        model = PeftModel.from_pretrained(load_model(section), model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tokenizer


def generate(model, tokenizer, prompt: str, sampling: Sampling, system: str | None = None) -> str:
    import torch

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template)
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    torch.manual_seed(sampling.seed)
    greedy = sampling.temperature <= 0
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature, top_k=None if greedy else sampling.top_k,
            top_p=None if greedy else sampling.top_p, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
