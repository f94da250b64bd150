"""Many sampled one-line continuations per prompt, for data.augment's few-shot generator (tune/data/augment.py).

Two things make it cheap on a CPU, where each token of each sequence costs the same compute: each prompt
runs through the model once and its cache is repeated for every sample (num_return_sequences would run it
once per sample), and sequences that have ended their line leave the batch (generate keeps computing a
finished sequence, padded, until the longest one ends). Measured on SmolLM2-135M, 32 FAQ questions x 12
samples: see shared_prompt_cache and PHASES."""

from __future__ import annotations

from tune.infer.generate import inference

PHASES = (16, 8)  # new tokens per generate call: the first call, then each next one (half of all lines end by 16)


def sample_batch(model, tokenizer, texts: list[str], samples: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, batch_size: int = 16) -> list[list[str]]:
    """`samples` sampled one-line continuations of each raw text (no chat template: few-shot prompts that
    base and chat models alike continue); a sequence stops at its first line break, as a few-shot answer
    ends there. Seeded: the same call repeats exactly on the same machine and software, so its results can
    be cached."""
    import torch

    results = []
    with inference(model, tokenizer):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], add_special_tokens=False, padding=True,
                              return_tensors="pt").to(model.device)
            torch.manual_seed(seed + start)
            key, cache = shared_prompt_cache(model, batch, samples)
            repeated = {name: tensor.repeat_interleave(samples, 0) for name, tensor in batch.items()}
            lines = _lines(model, tokenizer, repeated, key, cache, max_new_tokens,
                           {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None})
            results += [lines[i:i + samples] for i in range(0, len(lines), samples)]
    return results


def _lines(model, tokenizer, batch: dict, key: str, cache, max_new_tokens: int, sampling: dict) -> list[str]:
    """Each sequence continued to its first line break (or max_new_tokens), in PHASES: after each generate
    call the sequences whose line has ended are set aside and the cache keeps only the others' rows."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ends = {pad, tokenizer.eos_token_id}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = ids.shape[1]
    running = list(range(len(ids)))  # the sequences still writing, in the order of the cache's rows
    written: list[list[int]] = [[] for _ in running]
    left, phase = max_new_tokens, 0
    while running and left:
        step = min(PHASES[min(phase, len(PHASES) - 1)], left)
        output = model.generate(input_ids=ids, attention_mask=mask, **{key: cache}, max_new_tokens=step,
                                min_new_tokens=0, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                stop_strings=["\n"], tokenizer=tokenizer, **sampling)
        new = output[:, ids.shape[1]:].tolist()
        still = []
        for row, (sequence, tokens) in enumerate(zip(running, new)):
            written[sequence] += tokens
            text = tokenizer.decode(written[sequence], skip_special_tokens=True)
            if len(tokens) == step and not ends & set(tokens) and "\n" not in text:
                still.append(row)
        left, phase = left - step, phase + 1
        if not still or not left:
            break
        keep = torch.tensor(still, device=ids.device)
        cache.batch_select_indices(keep)
        ids = output[keep]
        mask = torch.cat([mask[keep], mask.new_ones(len(still), ids.shape[1] - mask.shape[1])], dim=1)
        running = [running[row] for row in still]
    texts = tokenizer.batch_decode(written, skip_special_tokens=True)
    return [text.strip().split("\n")[0] for text in texts]


def shared_prompt_cache(model, batch, samples: int):
    """(the generate keyword, a cache of each prompt but its last token, repeated `samples` times): every prompt
    runs through the model once, where num_return_sequences would run it `samples` times (measured on
    SmolLM2-135M, 16 few-shot prompts x 12 samples: 19 s of a 55 s batch). Positions follow the left padding
    as generate's do, so the samples are those of the plain call (greedy: token for token)."""
    import inspect

    from transformers import DynamicCache

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"  # renamed in 5.x
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = DynamicCache(config=inner.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True,
          **{key: cache})
    cache.batch_repeat_interleave(samples)
    return key, cache
