"""A merged Llama-family checkpoint (Llama, Mistral, Qwen2) -> one GGUF file for llama.cpp and Ollama,
written with the `gguf` package (no llama.cpp build), and read back to prove every tensor landed.

What llama.cpp needs beyond the weights: its tensor names (gguf's TensorNameMap), the hyper-parameters
under the architecture's keys, the tokenizer (tokens, types, merges, pre-tokenizer, special ids) and the
chat template, and for the `llama` architecture Q/K rows permuted from HF's rotate-half RoPE layout back
to the interleaved one llama.cpp applies. Qwen2 runs NeoX-style RoPE in llama.cpp and is not permuted."""

from __future__ import annotations

import json
from pathlib import Path

from tune.errors import TuneError

ARCHITECTURES = {  # HF class -> (gguf architecture, permute Q/K)
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}
QUANTS = ("f16", "bf16", "q8_0")
# Largest |dequantized - merged| allowed, as a share of the tensor's largest |weight|. f16 keeps 11 bits,
# bf16 8, and q8_0 stores each 32-value block as int8 times a scale, so the error is at most amax/254.
READBACK_TOLERANCE = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 5e-3}
# Byte-level BPE pre-tokenizer regexes llama.cpp knows, by the name it reads from tokenizer.ggml.pre.
PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def check_supported(config: dict, tokenizer_dir: Path) -> None:
    """Refuse early (before any merge) what this writer cannot convert correctly."""
    arch = (config.get("architectures") or ["?"])[0]
    problems = []
    if arch not in ARCHITECTURES:
        problems.append(f"--format gguf: architecture {arch} is not supported "
                        f"({', '.join(ARCHITECTURES)}); export --format merged and convert that")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "linear", "llama3"):
        problems.append(f"--format gguf: RoPE scaling {rope.get('rope_type')!r} is not supported")
    try:
        pre_tokenizer(json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")))
    except FileNotFoundError:
        problems.append(f"--format gguf: {tokenizer_dir} has no tokenizer.json")
    except TuneError as exc:
        problems += exc.problems
    if problems:
        raise TuneError(problems)


def pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer; only byte-level BPE ones are supported."""
    model, decoder = tokenizer_json.get("model", {}), tokenizer_json.get("decoder") or {}
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise TuneError("--format gguf: only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2 style) are "
                        "supported; a SentencePiece tokenizer (Llama 2, Mistral v0.x) needs llama.cpp's "
                        "convert_hf_to_gguf.py on an export --format merged")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # ByteLevel's built-in regex is GPT-2's (llama.cpp spells this pre-tokenizer gpt-2)
    splits = [step for step in pre.get("pretokenizers", []) if step.get("type") == "Split"]
    if len(splits) == 1 and splits[0].get("pattern", {}).get("Regex") in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[splits[0]["pattern"]["Regex"]]
    raise TuneError("--format gguf: the tokenizer's pre-tokenizer is not one llama.cpp knows by name "
                    "(gpt-2, llama-bpe, qwen2); convert an export --format merged with convert_hf_to_gguf.py")


def permute(weight, heads: int):
    """HF stores Q/K rows per head as [first halves | second halves] (rotate_half); llama.cpp's `llama`
    architecture rotates adjacent pairs, so each head's rows are interleaved back (convert_hf_to_gguf)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(merged_dir: Path, config: dict):
    """(gguf name, float32 numpy array) for every tensor, in checkpoint order, read one at a time."""
    import gguf
    import torch
    from safetensors import safe_open

    from tune.models.run_dir import checkpoint_files

    arch_name, permute_qk = ARCHITECTURES[config["architectures"][0]]
    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch_name)
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    for file in checkpoint_files(str(merged_dir)):
        handle = safe_open(file, framework="pt")
        for name in handle.keys():
            new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise TuneError(f"--format gguf: no GGUF name for tensor {name}")
            data = handle.get_tensor(name).to(torch.float32).numpy()
            if permute_qk and name.endswith("q_proj.weight"):
                data = permute(data, heads)
            elif permute_qk and name.endswith("k_proj.weight"):
                data = permute(data, kv_heads)
            yield new_name, data
    factors = llama3_rope_factors(config)
    if factors is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors


def llama3_rope_factors(config: dict):
    """Llama 3.1+ RoPE scaling is a per-frequency divisor that llama.cpp reads from a rope_freqs tensor:
    the default inverse frequencies over the scaled ones (transformers computes both)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type")) != "llama3":
        return None
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](AutoConfig.for_model(**config), "cpu")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    plain = 1.0 / (rope.get("rope_theta", config.get("rope_theta", 10000.0)) **
                   (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return (plain / scaled).numpy().astype("float32")


def quant_type(data, quant: str):
    """Norms, biases and rope factors stay float32 (llama.cpp expects it); q8_0 needs rows of 32."""
    import gguf

    types = gguf.GGMLQuantizationType
    if data.ndim < 2:
        return types.F32
    if quant == "q8_0":
        return types.Q8_0 if data.shape[-1] % 32 == 0 else types.F16
    return {"f16": types.F16, "bf16": types.BF16}[quant]


def write(merged_dir: Path, path: Path, quant: str, name: str, stops: list[str]) -> dict:
    import gguf

    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    arch_name, _ = ARCHITECTURES[config["architectures"][0]]
    # use_temp_file: tensors spill to disk as they are added, so a 7B q8_0 export does not sit in RAM
    writer = gguf.GGUFWriter(path, arch_name, use_temp_file=True)
    writer.add_type("model")
    writer.add_name(name)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    if rope.get("rope_type", rope.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, merged_dir, config["vocab_size"], stops)

    counts = {}
    for tensor_name, data in gguf_tensors(merged_dir, config):
        qtype = quant_type(data, quant)
        writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": path.name, "quant": quant, "architecture": arch_name, "tensor_types": counts}


def add_tokenizer(writer, model_dir: Path, n_vocab: int, stops: list[str]) -> None:
    """Tokens and types as convert_hf_to_gguf writes a GPT-2-style vocab; merges, special ids and the chat
    template through gguf's own SpecialVocab; BOS/EOS behaviour measured on the HF tokenizer."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(n_vocab):
        if index not in reverse:  # embedding rows beyond the tokenizer (padded vocab)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    probe = tokenizer("a")["input_ids"]
    # llama.cpp adds BOS/EOS by these flags; they must match what the HF tokenizer does, or every
    # prompt is shifted by one token.
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    if tokenizer.eos_token_id is not None and "pad" not in special.special_token_ids:
        # No pad token (Llama): pad with EOS, as training did; padding is masked, never matched by id.
        special.special_token_ids["pad"] = tokenizer.eos_token_id
    special.add_to_gguf(writer, quiet=True)
    end_of_turn = [token for token in stops if token != tokenizer.eos_token]
    if end_of_turn:  # e.g. <|eot_id|> when EOS is <|end_of_text|>: generation must stop there too
        writer.add_eot_token_id(tokenizer.convert_tokens_to_ids(end_of_turn[0]))


def read_back(path: Path, merged_dir: Path, quant: str) -> dict:
    """Every tensor present with its shape and within the quant's tolerance, and the tokenizer keys.
    Tensor by tensor, as write() streams them: the reader maps the file, and the checkpoint's tensors come
    one at a time, so an 8B export is not held in float32 (~32 GB) to be checked."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    stored = {tensor.name: tensor for tensor in reader.tensors}
    problems, worst, expected = [], 0.0, set()
    for name, want in gguf_tensors(merged_dir, config):
        expected.add(name)
        if name not in stored:
            continue
        got = gguf.quants.dequantize(stored[name].data, stored[name].tensor_type).reshape(want.shape)
        error = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
        worst = max(worst, error)
        allowed = READBACK_TOLERANCE[quant] if want.ndim > 1 else 1e-6  # 1-D tensors are stored as float32
        if error > allowed:
            problems.append(f"{name}: max relative error {error:.2e} over {allowed}")
    if set(stored) != expected:
        problems.insert(0, f"tensors differ: missing {sorted(expected - set(stored))[:3]}, "
                           f"extra {sorted(set(stored) - expected)[:3]}")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        if key not in reader.fields:
            problems.append(f"metadata {key} missing")
    return {"tensors": len(stored), "max_relative_error": worst, "problems": problems}
