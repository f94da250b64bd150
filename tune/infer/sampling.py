"""Many sampled one-line continuations per prompt, for data.augment's few-shot generator (tune/data/augment.py),
decoded by tune/infer/phases.py: each prompt through the model once, ended lines out of the batch.
Measured on SmolLM2-135M, 32 FAQ questions x 12 samples on 2 cores: 108 s with generate's
num_return_sequences, 41 s so."""

from __future__ import annotations

from tune.infer.generate import inference
from tune.infer.phases import decode


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
            written = decode(model, tokenizer, dict(batch), samples, max_new_tokens,
                             {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None},
                             stop_strings=["\n"])
            lines = [text.strip().split("\n")[0] for text in tokenizer.batch_decode(written, skip_special_tokens=True)]
            results += [lines[i:i + samples] for i in range(0, len(lines), samples)]
    return results
