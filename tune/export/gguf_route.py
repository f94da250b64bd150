"""Which GGUF converter an export takes, decided before any merge, and the read-back of llama.cpp's output.

tune's own writer (to_gguf.py) serves Llama, Mistral and Qwen2 with a byte-level BPE tokenizer: the
quickstart's tiny Llama and SmolLM2 export with nothing to download. Everything else (Qwen3, Qwen3-MoE,
Gemma 2/3, Phi-3, SentencePiece tokenizers, ~100 architectures) goes through llama.cpp's maintained
convert_hf_to_gguf.py (llama_cpp.py), fetched once."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from tune.errors import TuneError

CONVERTERS = ("auto", "tune", "llama.cpp")
EXAMPLES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
            "Qwen3MoeForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM")


@dataclass
class Route:
    converter: str  # "tune" or "llama.cpp"
    tree: Path | None = None  # llama.cpp's converter folder
    pre_fallback: str | None = None  # llama.cpp pre-tokenizer name for a BPE vocabulary its hash table lacks
    spm_from_json: bool = False  # SentencePiece-style vocabulary written from tokenizer.json

    def describe(self) -> str:
        if self.converter == "tune":
            return "tune's GGUF writer"
        from tune.export.llama_cpp import LLAMA_CPP_COMMIT

        notes = [f"pre-tokenizer {self.pre_fallback!r} by its regex if llama.cpp's hash table lacks the vocabulary"] \
            if self.pre_fallback else []
        notes += ["SentencePiece vocabulary from tokenizer.json"] if self.spm_from_json else []
        return f"llama.cpp's convert_hf_to_gguf.py (llama.cpp@{LLAMA_CPP_COMMIT})" + \
            (f" with {', '.join(notes)}" if notes else "")


def choose(config: dict, tokenizer_dir: Path, converter: str = "auto", echo=print) -> Route:
    """tune's writer when it can (and `converter` allows), else llama.cpp's converter, fetched if needed;
    one line naming what would work when neither can convert this model."""
    from tune.export import llama_cpp, to_gguf

    if converter not in CONVERTERS:
        raise TuneError(f"--converter: {converter!r} is not one of {', '.join(CONVERTERS)}")
    if converter != "llama.cpp":
        try:
            to_gguf.check_supported(config, tokenizer_dir)
            return Route("tune")
        except TuneError:
            if converter == "tune":
                raise
    arch = (config.get("architectures") or ["?"])[0]
    tree = llama_cpp.locate(echo)
    if arch not in llama_cpp.architectures(tree):
        raise TuneError(f"--format gguf: llama.cpp's converter (llama.cpp@{llama_cpp.LLAMA_CPP_COMMIT}) does not "
                        f"convert {arch}; it converts e.g. {', '.join(EXAMPLES)}; export --format merged instead")
    tokenizer_json = _tokenizer_json(tokenizer_dir)
    model = tokenizer_json.get("model", {})
    spm_style = model.get("type") == "BPE" and bool(model.get("byte_fallback"))
    has_spm_file = (tokenizer_dir / "tokenizer.model").is_file()
    has_sentencepiece = importlib.util.find_spec("sentencepiece") is not None
    if has_spm_file and not spm_style and not has_sentencepiece:
        raise TuneError(f"--format gguf: {tokenizer_dir / 'tokenizer.model'} needs the sentencepiece package for "
                        "llama.cpp's converter: pip install sentencepiece")
    if not tokenizer_json and not has_spm_file:
        raise TuneError(f"--format gguf: {tokenizer_dir} has neither tokenizer.json nor tokenizer.model")
    pre_fallback = None
    if tokenizer_json and not spm_style:
        try:
            pre_fallback = to_gguf.pre_tokenizer(tokenizer_json)
        except TuneError:
            pre_fallback = None  # the converter's own hash table must know it, or it says so
    return Route("llama.cpp", tree, pre_fallback, spm_style and (not has_spm_file or not has_sentencepiece))


def _tokenizer_json(folder: Path) -> dict:
    path = folder / "tokenizer.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write(route: Route, merged: Path, path: Path, quant: str, name: str, stops: list[str]) -> dict:
    from tune.export import llama_cpp, to_gguf

    if route.converter == "tune":
        return to_gguf.write(merged, path, quant, name, stops) | {"converter": route.describe()}
    if route.spm_from_json:  # the converter would read tokenizer.model with sentencepiece (absent or not wanted)
        (merged / "tokenizer.model").unlink(missing_ok=True)
    llama_cpp.convert(route.tree, merged, path, quant, route.pre_fallback, route.spm_from_json)
    import gguf

    from tune.export import gguf_header

    header = gguf_header.read(path)
    counts: dict[str, int] = {}
    for _, _, ggml_type in header.tensors:
        name = gguf.GGMLQuantizationType(ggml_type).name
        counts[name] = counts.get(name, 0) + 1
    return {"file": path.name, "quant": quant, "architecture": header.fields.get("general.architecture"),
            "tokenizer": f"{header.fields.get('tokenizer.ggml.model')}, pre-tokenizer "
                         f"{header.fields.get('tokenizer.ggml.pre')}",
            "tensor_types": counts, "converter": route.describe()}


HYPER_PARAMETERS = {  # GGUF key after "<arch>." -> HF config key, compared where both are present
    "block_count": "num_hidden_layers", "embedding_length": "hidden_size", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
    "expert_count": "num_experts", "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size", "attention.sliding_window": "sliding_window",
}


def read_back(path: Path, merged: Path, tokenizer) -> dict:
    """llama.cpp's file, its header read back: the architecture's hyper-parameters match the merged config,
    every block has tensors, the vocabulary has one entry per embedding row, and the special ids, chat
    template and tokenizer keys are there. (The weights are checked through the logits.)"""
    from tune.export import gguf_header

    header = gguf_header.read(path)
    fields = header.fields
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    problems = []
    arch = fields.get("general.architecture")
    for key, name in HYPER_PARAMETERS.items():
        stored, want = fields.get(f"{arch}.{key}"), config.get(name)
        if stored is not None and want is not None and stored != want:
            problems.append(f"{arch}.{key} is {stored}, the merged config's {name} is {want}")
    blocks = fields.get(f"{arch}.block_count") or 0
    shapes = {name: dims for name, dims, _ in header.tensors}
    missing = [index for index in range(blocks) if not any(n.startswith(f"blk.{index}.") for n in shapes)]
    if missing or "token_embd.weight" not in shapes:
        problems.append(f"tensors missing: token_embd {'token_embd.weight' in shapes}, blocks {missing[:3]}")
    tokens = fields.get("tokenizer.ggml.tokens", 0)
    if "token_embd.weight" in shapes and shapes["token_embd.weight"][-1] != tokens:
        problems.append(f"{tokens} tokens for {shapes['token_embd.weight'][-1]} embedding rows")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.token_type") + \
            (("tokenizer.ggml.eos_token_id",) if tokenizer.eos_token_id is not None else ()):
        if key not in fields:
            problems.append(f"metadata {key} missing")
    if tokenizer.chat_template and fields.get("tokenizer.chat_template") != tokenizer.chat_template:
        problems.append("tokenizer.chat_template is not the run's chat template")
    return {"tensors": len(header.tensors), "tokens": tokens, "problems": problems}
