"""`tune init-tiny` (and the first use of model.name tiny-llama): a small random Llama-architecture model
with a byte-level BPE tokenizer trained here, on the bundled sample data, and a ChatML chat template. It
powers the offline quickstart and the tests: real code paths (PEFT, TRL, bitsandbytes, merge, export)
without downloading anything."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tune.paths import bundled_dir

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_lines() -> list[str]:
    """Text to train the tokenizer on: the bundled instruction sample plus the templates' own words.
    (Fixed on purpose: adding sample files must not change the tiny tokenizer the tests pin.)"""
    lines = []
    data = bundled_dir("data_templates")
    for line in (data / "instruction.jsonl").read_text(encoding="utf-8").splitlines():
        lines.extend(str(value) for value in json.loads(line).values())
    for path in sorted((data / "templates").glob("*.jinja")):
        lines.append(path.read_text(encoding="utf-8"))
    lines.append("system user assistant ### Instruction: ### Input: ### Response: You are a helpful assistant.")
    return lines


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus_lines(), trainer=trainer)
    # Like Llama, no pad token: the trainer must cope (it pads with EOS and keeps EOS in the labels).
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.chat_template = (bundled_dir("data_templates") / "templates" / "chatml.jinja").read_text()
    return tokenizer


def build(out_dir: str | Path, hidden_size: int = 256, layers: int = 4, vocab_size: int = 1024,
          seed: int = 0, overwrite: bool = False) -> Path:
    """Write config, safetensors weights, tokenizer and generation config to `out_dir` atomically."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from tune.quiet import quiet_libraries

    quiet_libraries()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        return out_dir
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=_multiple_of_64(hidden_size * 11 // 4),
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.eos_token_id)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    try:
        os.replace(staging, out_dir)  # onto nothing or an empty folder
    except OSError:  # built meanwhile by another process (each rank of a run builds on first use): same seed
        shutil.rmtree(staging, ignore_errors=True)
        if not (out_dir / "config.json").is_file():
            raise
    return out_dir


def _multiple_of_64(size: int) -> int:
    # bitsandbytes' CPU 4-bit kernels need input widths divisible by the 64-wide quantization block.
    return -(-size // 64) * 64
