"""GGUF export through llama.cpp's converter: tiny random Qwen3, Qwen3-MoE, Gemma 3 and Phi-3 (byte-level BPE
and SentencePiece-style tokenizers) round-trip: the file is read back, transformers' GGUF loader gives
base+adapter's logits from it (cosine >= 0.999, same top-1), its tokenizer encodes as the run's does, and
the Ollama Modelfile stops at the end of a turn. What the converter cannot do is refused before any merge."""

import json

import pytest

from tests.conftest import write_recipe
from tests.export.tiny_archs import build
from tune import recipe as recipe_io
from tune.errors import TuneError
from tune.export import gguf_header, pipeline

pytestmark = pytest.mark.slow
CASES = {  # kind -> (GGUF architecture, tokenizer model, the Modelfile's stop words, a tensor only it has)
    "qwen3": ("qwen3", "gpt2", ["<|im_end|>"], "blk.0.attn_q_norm.weight"),
    "qwen3-moe": ("qwen3moe", "gpt2", ["<|im_end|>"], "blk.1.ffn_gate_exps.weight"),
    "gemma3": ("gemma3", "llama", ["<eos>", "<end_of_turn>"], "blk.0.post_ffw_norm.weight"),
    "phi3": ("phi3", "llama", ["<eos>", "<|end|>"], "blk.0.attn_qkv.weight"),
}


@pytest.fixture(scope="module")
def run_of(tmp_path_factory):
    made = {}

    def get(kind):
        if kind not in made:
            root = tmp_path_factory.mktemp(kind)
            build(kind, root / "base")
            path = write_recipe(root / "r.yaml", model={"name": str(root / "base")}, adapter={"r": 4},
                                train={"max_steps": 2, "learning_rate": 1e-2})
            from tune.train.sft import train

            train(recipe_io.load(path), path, echo=lambda line: None)
            made[kind] = root / "out"
        return made[kind]

    return get


@pytest.fixture(scope="module")
def exported(run_of, llama_cpp_tree, tmp_path_factory):
    """kind -> (export dir, report, lines), exported once with f16."""
    made = {}

    def get(kind):
        if kind not in made:
            lines = []
            out = tmp_path_factory.mktemp(f"gguf-{kind}") / "gguf"
            made[kind] = out, pipeline.export(run_of(kind), out, "gguf", "f16", echo=lines.append), lines
        return made[kind]

    return get


@pytest.mark.parametrize("kind", CASES)
def test_round_trip_through_llama_cpp(kind, exported):
    arch, tokenizer_model, stops, own_tensor = CASES[kind]
    out, report, lines = exported(kind)
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "export.json", "model-f16.gguf"]
    assert report["gguf"]["converter"].startswith("llama.cpp's convert_hf_to_gguf.py (llama.cpp@0c1e57098)")
    merged, logits = report["verification"]
    assert merged["ok"] and logits["what"] == "gguf (transformers)", report["verification"]
    assert logits["min_cosine"] >= 0.999 and logits["top1_agreement"] >= 0.9, logits
    assert logits["tokenizer_probes_equal"] == "3/3" and logits["ok"]
    header = gguf_header.read(out / "model-f16.gguf")
    assert header.fields["general.architecture"] == arch
    assert header.fields["tokenizer.ggml.model"] == tokenizer_model
    assert own_tensor in {name for name, _, _ in header.tensors}
    assert header.fields["tokenizer.chat_template"]  # the run's template travels in the file
    modelfile = (out / "Modelfile").read_text()
    assert [line.split('"')[1] for line in modelfile.splitlines() if line.startswith("PARAMETER stop")] == stops
    assert json.loads((out / "export.json").read_text())["verification"][1]["ok"]
    if kind == "qwen3-moe":  # 4 experts x (ffn 32 x hidden 64), in ggml's innermost-first order
        assert dict((n, d) for n, d, _ in header.tensors)["blk.0.ffn_down_exps.weight"] == (32, 64, 4)
        assert header.fields["qwen3moe.expert_count"] == 4 and header.fields["qwen3moe.expert_used_count"] == 2
    if kind in ("qwen3", "qwen3-moe"):  # a retrained BPE misses llama.cpp's hash table; its regex is GPT-2's
        assert any("pre-tokenizer 'gpt-2' by its regex if llama.cpp's hash table lacks" in line for line in lines)
        assert header.fields["tokenizer.ggml.pre"] == "gpt-2" and report["gguf"]["tokenizer"] == "gpt2, pre-tokenizer gpt-2"


def test_a_wrong_gguf_fails_the_logit_check(run_of, exported):
    """The check can fail: against a reference whose adapter was never applied (the base's logits)."""
    from transformers import AutoTokenizer

    from tune.export.verify import Reference, gguf_transformers_check, reference
    from tune.models.run_dir import read_adapter_dir

    out, _, _ = exported("gemma3")
    run = read_adapter_dir(run_of("gemma3"), None, lambda line: None)
    ref = reference(run)
    tokenizer = AutoTokenizer.from_pretrained(run.path)
    check = gguf_transformers_check(out / "model-f16.gguf", Reference(ref.probes, ref.base, ref.base, 0.0),
                                    tokenizer, run.base)
    assert not check.ok and check.min_cosine < 0.999, check.line()


def test_an_architecture_the_converter_lacks_is_refused_before_any_merge(trained, tiny_model, llama_cpp_tree,
                                                                          tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config | {"architectures": ["OrrinForCausalLM"]}))
    with pytest.raises(TuneError) as caught:
        pipeline.export(trained("lora"), tmp_path / "out", "gguf", base=str(base), echo=lambda line: None)
    assert str(caught.value) == (
        "--format gguf: llama.cpp's converter (llama.cpp@0c1e57098) does not convert OrrinForCausalLM; it converts "
        "e.g. LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, "
        "Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM; export --format merged instead")
    assert not (tmp_path / "out").exists()


def test_converter_tune_refuses_what_its_writer_cannot_do(run_of, tmp_path):
    with pytest.raises(TuneError, match="architecture Qwen3ForCausalLM is not supported"):
        pipeline.export(run_of("qwen3"), tmp_path / "out", "gguf", echo=lambda line: None, converter="tune")
