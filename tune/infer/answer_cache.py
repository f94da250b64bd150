"""Greedy answers of a base model, kept in TUNE_HOME between runs. Probes and replay ask the base model the
same questions on every run of a recipe; greedy decoding makes the answers a pure function of the weights,
the prompts and the software, so the second run of a day reuses them instead of generating for minutes.
A base whose weights cannot be identified (a hub id without a local snapshot) is never cached."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tune.errors import TuneError
from tune.paths import tune_home


def model_identity(source: str) -> str | None:
    """What identifies a local model's weights: each weight file's name, size and modification time."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    if not any(p.suffix == ".safetensors" for p in files):
        return None
    return json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def cached_answers(source: str, what: dict, compute):
    """compute() -> JSON-able answers, stored under a key of the model's identity, `what` (prompts, template,
    token limit...) and the library versions that decide the numerics."""
    import torch
    import transformers

    identity = model_identity(source)
    if identity is None:
        return compute()
    key_text = json.dumps([identity, what, torch.__version__, transformers.__version__], sort_keys=True)
    path = tune_home() / "cache" / "answers" / f"{hashlib.sha256(key_text.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            pass  # a damaged entry is recomputed and rewritten
    answers = compute()
    from tune.output import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, answers)
    return answers


def base_answerer(model, tokenizer, recipe, source: str, template: str):
    """generate_batch on the base model, through the TUNE_HOME answer cache (greedy answers repeat exactly)."""
    import torch

    from tune.infer.generate import generate_batch
    from tune.models.load import cpu_has_bf16

    hardware = (torch.cuda.get_device_name() if model.device.type == "cuda"
                else f"cpu bf16={cpu_has_bf16()}")
    setting = {"model": recipe.model.model_dump(mode="json"), "template": template, "hardware": hardware,
               "weights": str(model.dtype)}
    if recipe.model.adapter:  # a continued adapter: its weights, not its path, decide the answers
        weights = Path(recipe.model.adapter) / "adapter_model.safetensors"
        setting["adapter_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None

    def answer(conversations, max_new_tokens):
        what = setting | {"conversations": conversations, "max_new_tokens": max_new_tokens}
        found = cached_answers(source, what, lambda: generate_batch(model, tokenizer, conversations, max_new_tokens))
        return [tuple(item) for item in found]

    return answer


def cached_sampler(model, tokenizer, source: str, setting: dict):
    """sample_batch through the TUNE_HOME cache: generate(texts, samples) -> samples texts per text.
    `setting`: everything besides the texts that decides the samples (model, sampling knobs, seed)."""
    import torch

    from tune.infer.sampling import sample_batch
    from tune.models.load import cpu_has_bf16

    hardware = torch.cuda.get_device_name() if model.device.type == "cuda" else f"cpu bf16={cpu_has_bf16()}"

    def generate(texts: list[str], samples: int) -> list[list[str]]:
        what = setting | {"texts": texts, "samples": samples, "hardware": hardware, "weights": str(model.dtype)}
        return cached_answers(source, what, lambda: sample_batch(
            model, tokenizer, texts, samples, setting["max_new_tokens"], setting["temperature"], setting["top_p"],
            setting["seed"]))

    return generate


def generator_source(recipe, echo):
    """(model section, local source) of data.augment.model, resolved (a GGUF converted) now, so a name that
    cannot be found stops the run before anything is loaded or written; None: the base generates."""
    from tune.models.resolve import model_source

    settings = recipe.data.augment
    if settings is None or settings.model is None:
        return None
    section = recipe.model.model_copy(update={"name": settings.model, "gguf_file": None, "revision": None,
                                              "quantization": "none", "adapter": None})
    try:
        return section, model_source(section, echo)
    except TuneError as exc:
        raise TuneError([f"data.augment.model: {problem.removeprefix('model.name: ')}" for problem in exc.problems]) from None


@dataclass
class AugmentGenerator:
    generate: Callable  # (texts, samples) -> samples texts per text, through the TUNE_HOME cache
    score: Callable  # (pairs) -> how likely each (question, answer) pair's answer is after its question
    near: Callable  # (words) -> {word: near words}, by the generator's input embeddings
    fluency: Callable  # (texts) -> mean log-probability per token of each text


def augment_generator(model, tokenizer, recipe, source: str, template: str, echo, generator=None) -> AugmentGenerator:
    """data.augment's generator: the base being tuned (already loaded), or the generator_source model
    loaded here, sampling through the TUNE_HOME cache; the round trip is scored by the same model, with
    the run's chat template."""
    from tune.infer.near_words import text_fluency, word_neighbours

    settings = recipe.data.augment
    if generator is not None:
        from tune.models.load import load_model, load_tokenizer

        section, source = generator
        model, tokenizer = load_model(section, source), load_tokenizer(section, source)
        echo(f"augment: generating with {settings.model}")
    setting = {"generator": settings.model or recipe.model.model_dump(mode="json"), "seed": recipe.train.seed,
               **settings.model_dump(mode="json", include={"temperature", "top_p", "max_new_tokens"})}
    own_template = template if settings.model is None else (tokenizer.chat_template or template)
    return AugmentGenerator(cached_sampler(model, tokenizer, source, setting),
                            round_trip_scorer(model, tokenizer, own_template),
                            word_neighbours(model, tokenizer), text_fluency(model, tokenizer))


def round_trip_scorer(model, tokenizer, template: str):
    """score(pairs) -> how likely the model finds each (question, answer) pair's answer after its question."""
    from tune.data.conversation import tokenize
    from tune.infer.generate import answer_logprobs

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        examples = []
        for question, answer in pairs:
            example = tokenize([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                               tokenizer, template)
            examples.append({"input_ids": example.input_ids, "labels": example.labels})
        return answer_logprobs(model, tokenizer, examples)

    return score
