"""Inference from a run's output dir (base model + adapter) or any full model folder, rendering the
prompt with the chat template the run trained with: one prompt, a file of prompts, or a chat."""

from __future__ import annotations

from contextlib import contextmanager
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


def load_for_inference(model_dir: Path, echo=None, granted: frozenset[str] = frozenset()):
    """(model, tokenizer) from an adapter dir written by `tune run`, or from a full model folder. `granted`:
    what the command lets the run's recipe.yaml do (tune/models/run_dir.py refuse_ungranted)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.models.load import load_model
    from tune.models.resolve import model_source
    from tune.models.run_dir import check_safetensors, run_recipe

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TuneError(f"{model_dir}: no such folder")
    if not (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        raise TuneError(f"{model_dir}: neither an adapter dir (adapter_config.json) nor a model folder (config.json)")
    if (model_dir / "labels.json").is_file():
        raise TuneError(f"{model_dir}: a classifier (train.method: classify or reward) scores text and does not "
                        f"write it; use `tune predict {model_dir} --data FILE --out FILE`")
    adapter = (model_dir / "adapter_config.json").is_file()
    recipe = run_recipe(model_dir, granted) if adapter else None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter:
        from peft import PeftModel

        check_safetensors(model_dir / "adapter_model.safetensors")
        if recipe is None:
            raise TuneError(f"{model_dir}: adapter without recipe.yaml, so its base model is unknown")
        model = PeftModel.from_pretrained(load_model(recipe.model, model_source(recipe.model, echo)), model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    model.eval()
    return model, tokenizer


def prompt_ids(tokenizer, messages: list[dict]):
    import torch

    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"]
    return torch.tensor([ids])


def generate_ids(model, tokenizer, messages: list[dict] | str, sampling: Sampling) -> list[int]:
    """The new token ids only (special tokens included), for callers that count or compare tokens."""
    import torch

    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    ids = prompt_ids(tokenizer, messages).to(model.device)
    check_fits(model, ids.shape[1], sampling.max_new_tokens)
    torch.manual_seed(sampling.seed)
    greedy = sampling.temperature <= 0
    with torch.no_grad():
        output = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_k=None if greedy else sampling.top_k, top_p=None if greedy else sampling.top_p,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    return output[0, ids.shape[1]:].tolist()


class PromptTooLong(TuneError):
    """The prompt plus the answer's token budget exceed what the model can read."""


def context_length(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a prompt the model cannot read whole: past its context it answers garbage, silently."""
    context = context_length(model)
    if context and prompt_tokens + max_new_tokens > context:
        raise PromptTooLong(f"the prompt is {prompt_tokens} tokens and the answer may add {max_new_tokens}, but the "
                            f"model reads at most {context}; shorten the prompt or lower --max-new-tokens")


def generate(model, tokenizer, messages: list[dict] | str, sampling: Sampling) -> str:
    return tokenizer.decode(generate_ids(model, tokenizer, messages, sampling), skip_special_tokens=True).strip()


def messages_of(row: dict, where: str) -> list[dict]:
    """The prompt of a data row (instruction, prompt or chat messages), without its reference answer."""
    turns = row.get("messages") or row.get("conversations")
    if isinstance(turns, list):
        from tune.data.chat import ROLE_NAMES

        messages = [{"role": ROLE_NAMES.get(str(t.get("role", t.get("from"))).lower(), "user"),
                     "content": t.get("content", t.get("value", ""))} for t in turns if isinstance(t, dict)]
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()  # the reference answer is what we are about to generate
        return messages
    text = row.get("prompt") or row.get("instruction")
    if not isinstance(text, str) or not text:
        raise TuneError(f"{where}: needs a 'prompt', 'instruction' or 'messages' column")
    if row.get("input"):
        text = f"{text}\n\n{row['input']}"
    return ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
        {"role": "user", "content": text}]


@contextmanager
def inference(model, tokenizer=None):
    """The model in eval mode, and the tokenizer padding on the left (batched generation), until the block
    ends; inside it no gradients are kept, and on a CPU with native bfloat16 (AVX512-BF16) a float32 or bf16
    model runs under bf16 autocast, as it trains: ~1.4x faster."""
    import torch

    from tune.models.load import cpu_has_bf16

    autocast = model.device.type == "cpu" and model.dtype in (torch.float32, torch.bfloat16) and cpu_has_bf16()
    side = tokenizer.padding_side if tokenizer is not None else None
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    model_was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            yield
    finally:
        if tokenizer is not None:
            tokenizer.padding_side = side
        model.train(model_was_training)


def generate_batch(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                   batch_size: int = 32, sampling: Sampling | None = None) -> list[tuple[str, bool]]:
    """Answers to many prompts, batched with left padding, prompts of alike length together and ended answers
    out of the batch (tune/infer/phases.py): (text, finished) per prompt, where finished means the model
    ended its turn before max_new_tokens. Greedy unless `sampling` has a temperature (then seeded per
    batch, so a call repeats exactly)."""
    import torch

    from tune.infer.phases import decode

    sampled = sampling is not None and sampling.temperature > 0
    knobs = (dict(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
             if sampled else dict(do_sample=False, temperature=None, top_k=None, top_p=None))
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    answers: dict[int, tuple[str, bool]] = {}
    with inference(model, tokenizer):
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in chosen], add_special_tokens=False, padding=True,
                              return_tensors="pt").to(model.device)
            if sampled:
                torch.manual_seed(sampling.seed + start)
            written = decode(model, tokenizer, dict(batch), 1, max_new_tokens, knobs)
            for i, row in zip(chosen, written):
                finished = tokenizer.eos_token_id in row
                text = tokenizer.decode(row[:row.index(tokenizer.eos_token_id)] if finished else row,
                                        skip_special_tokens=True).strip()
                answers[i] = (text, finished)
    return [answers[i] for i in range(len(texts))]


def answer_logprobs(model, tokenizer, examples: list[dict], batch_size: int = 16) -> list[float]:
    """The mean log-probability per trained token of each tokenized example ({input_ids, labels}): how
    likely the model finds the answer after the question. Examples of alike length are batched together,
    and the output layer runs only from the first trained position of the batch on (over a 49k vocabulary
    it is a fifth of a small model's compute)."""
    import inspect

    import torch

    from tune.infer.phases import unwrapped

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    can_skip = "logits_to_keep" in inspect.signature(unwrapped(model).forward).parameters
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    means: dict[int, float] = {}
    with inference(model):
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start:start + batch_size]]
            width = max(len(e["input_ids"]) for e in batch)
            padded = lambda key, fill: torch.tensor([e[key] + [fill] * (width - len(e[key])) for e in batch],  # noqa: E731
                                                    device=model.device)
            ids, labels = padded("input_ids", pad), padded("labels", -100)
            lengths = torch.tensor([len(e["input_ids"]) for e in batch], device=model.device)
            mask = (torch.arange(width, device=model.device)[None] < lengths[:, None]).long()
            first = min(next((i for i, label in enumerate(e["labels"]) if label != -100), width) for e in batch)
            kept = width - max(0, first - 1) if can_skip else width  # logits at position t predict token t + 1
            skip = {"logits_to_keep": kept} if can_skip else {}
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **skip).logits.float()
            targets = labels[:, width - kept + 1:]
            picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
            counted = targets != -100
            scores = ((picked * counted).sum(1) / counted.sum(1).clamp(min=1)).tolist()
            means.update(zip(order[start:start + batch_size], scores))
    return [means[i] for i in range(len(examples))]
