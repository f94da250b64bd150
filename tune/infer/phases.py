"""Batched decoding that stops computing a sequence once it has ended. generate keeps a finished sequence in
the batch, padded, until the longest one ends, and on a CPU every row of the batch costs the same compute;
so the batch is decoded in PHASES, and between two generate calls the sequences that ended leave the batch
and the cache keeps only the others' rows. Each prompt also runs through the model once however many
continuations it gets (shared_prompt_cache). Used by data.augment's sampler (tune/infer/sampling.py) and by
the batched answers of probes, replay and held-out prompts (tune/infer/generate.py generate_batch)."""

from __future__ import annotations

PHASES = (16, 8)  # new tokens per generate call: the first call, then each next one (half of all lines end by 16)


def unwrapped(model):
    """The transformers model inside a PEFT wrapper (its forward's signature and class say what it supports)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decode(model, tokenizer, batch: dict, repeats: int, max_new_tokens: int, knobs: dict,
           stop_strings: list[str] | None = None) -> list[list[int]]:
    """The new tokens of `repeats` continuations of each prompt of `batch` (tokenized, left-padded), in order:
    in phases where the model's cache is transformers' own (attention layers, sliding windows included),
    else in one plain generate call (models that keep a cache of their own: xlnet, rwkv and the like)."""
    supported = getattr(type(unwrapped(model)), "_supports_default_dynamic_cache", None)
    repeated = {name: tensor.repeat_interleave(repeats, 0) for name, tensor in batch.items()}
    if supported is None or supported():
        key, cache = shared_prompt_cache(model, batch, repeats)
        return continue_in_phases(model, tokenizer, repeated, key, cache, max_new_tokens, knobs, stop_strings)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = {"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}
    output = model.generate(**repeated, max_new_tokens=max_new_tokens, pad_token_id=pad,
                            eos_token_id=tokenizer.eos_token_id, **stops, **knobs)
    return output[:, batch["input_ids"].shape[1]:].tolist()


def shared_prompt_cache(model, batch, repeats: int = 1):
    """(the generate keyword, a cache of each prompt but its last token, repeated `repeats` times): every prompt
    runs through the model once, where num_return_sequences would run it once per sample (measured on
    SmolLM2-135M, 16 few-shot prompts x 12 samples: 19 s of a 55 s batch). Positions follow the left padding
    as generate's do, so the continuations are those of the plain call (greedy: token for token)."""
    import inspect

    from transformers import DynamicCache

    inner = unwrapped(model)
    key = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"  # renamed in 5.x
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = DynamicCache(config=inner.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True,
          **{key: cache})
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    return key, cache


def continue_in_phases(model, tokenizer, batch: dict, key: str, cache, max_new_tokens: int, knobs: dict,
                       stop_strings: list[str] | None = None) -> list[list[int]]:
    """The new tokens of each sequence of `batch` (its prompts' cache in `cache`), up to its end token, a stop
    string or max_new_tokens; after an ended sequence come pad tokens, as generate writes them."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ends = {pad, tokenizer.eos_token_id}
    stops = {"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    running = list(range(len(ids)))  # the sequences still writing, in the order of the cache's rows
    written: list[list[int]] = [[] for _ in running]
    left, phase = max_new_tokens, 0
    while running and left:
        step = min(PHASES[min(phase, len(PHASES) - 1)], left)
        output = model.generate(input_ids=ids, attention_mask=mask, **{key: cache}, max_new_tokens=step,
                                pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **stops, **knobs)
        still = []
        for row, (sequence, tokens) in enumerate(zip(running, output[:, ids.shape[1]:].tolist())):
            written[sequence] += tokens
            ended = len(tokens) < step or bool(ends & set(tokens)) or (
                stop_strings and any(s in tokenizer.decode(written[sequence]) for s in stop_strings))
            if not ended:
                still.append(row)
        left, phase = left - step, phase + 1
        if not still or not left:
            break
        keep = torch.tensor(still, device=ids.device)
        cache.batch_select_indices(keep)
        ids = output[keep]
        mask = torch.cat([mask[keep], mask.new_ones(len(still), ids.shape[1] - mask.shape[1])], dim=1)
        running = [running[row] for row in still]
    return written
