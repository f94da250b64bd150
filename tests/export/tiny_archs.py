"""Tiny random models of the architectures llama.cpp's converter serves (2 layers, 64 wide), each with the
tokenizer family its real models use: byte-level BPE (Qwen3, Qwen3-MoE) or SentencePiece-style BPE with
byte fallback given as tokenizer.json only (Gemma 3, Phi-3), as a model converted by `tune models get`
or saved by transformers 5 (which writes no tokenizer.model)."""

from __future__ import annotations

from pathlib import Path

GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
                  "else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def spm_style_tokenizer(prepend_space: bool, turn_tokens: list[str], template: str):
    """BPE with byte fallback and the U+2581 space marker, as Gemma's and Llama 2's tokenizer.json are:
    ids 0-3 <pad> <eos> <bos> <unk>, 256 byte pieces, then pieces learnt from the tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tune.models.tiny import corpus_lines

    steps = [normalizers.Prepend("▁")] if prepend_space else []
    normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizer
    learner.train_from_iterator(corpus_lines(), trainers.BpeTrainer(vocab_size=500, show_progress=False))
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(learner.get_vocab().items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    learnt = learner.to_str()
    import json

    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in json.loads(learnt)["model"]["merges"]]
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    core.normalizer = normalizer
    strip = [decoders.Strip(" ", 1, 0)] if prepend_space else []
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                        special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": turn_tokens})
    tokenizer.chat_template = template
    return tokenizer


def build(kind: str, folder: Path) -> Path:
    import torch
    import transformers as hf

    from tune.models.tiny import build_tokenizer

    torch.manual_seed(0)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    if kind in ("qwen3", "qwen3-moe"):
        tokenizer = build_tokenizer(1024)
        ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
        if kind == "qwen3":
            model = hf.Qwen3ForCausalLM(hf.Qwen3Config(vocab_size=len(tokenizer), head_dim=16, tie_word_embeddings=True,
                                                       **common, **ids))
        else:
            model = hf.Qwen3MoeForCausalLM(hf.Qwen3MoeConfig(
                vocab_size=len(tokenizer), head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False, **common, **ids))
    elif kind == "gemma3":
        tokenizer = spm_style_tokenizer(False, ["<start_of_turn>", "<end_of_turn>"], GEMMA_TEMPLATE)
        model = hf.Gemma3ForCausalLM(hf.Gemma3TextConfig(
            vocab_size=len(tokenizer), head_dim=16, sliding_window=32, pad_token_id=0, eos_token_id=1, bos_token_id=2,
            **common))
    elif kind == "phi3":
        tokenizer = spm_style_tokenizer(True, ["<|user|>", "<|assistant|>", "<|end|>"], PHI3_TEMPLATE)
        model = hf.Phi3ForCausalLM(hf.Phi3Config(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                                 bos_token_id=2, **common))
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
