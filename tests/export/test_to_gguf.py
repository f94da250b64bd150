"""GGUF export: every tensor, shape and tokenizer key is in the file and reads back within the quant's
tolerance; Q/K are permuted the way llama.cpp's RoPE needs; the Modelfile stops at the end of a turn; and,
when llama-cpp-python is installed, llama.cpp's greedy tokens match the merged HF model."""

import json

import pytest
import torch

from tune.errors import TuneError
from tune.export import pipeline, to_gguf

LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """quant -> export dir, each exported once (f16 verified, q8_0 verified too)."""
    made = {}

    def get(quant):
        if quant not in made:
            out = tmp_path_factory.mktemp(f"gguf-{quant}") / "out"
            pipeline.export(trained("lora"), out, "gguf", quant, echo=lambda line: None)
            made[quant] = out
        return made[quant]

    return get


@pytest.mark.parametrize("quant,weight_type", [("f16", "F16"), ("q8_0", "Q8_0")])
def test_gguf_holds_every_tensor_shape_and_tokenizer_key(quant, weight_type, exported, tiny_model):
    import gguf
    from transformers import AutoTokenizer

    out = exported(quant)
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "export.json", f"model-{quant}.gguf"]
    reader = gguf.GGUFReader(out / f"model-{quant}.gguf")
    config = json.loads((tiny_model / "config.json").read_text())
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,), "output.weight": (vocab, hidden)}
    for layer in range(2):
        for name, shape in zip(LAYER_TENSORS, [(hidden,), (hidden, hidden), (kv, hidden), (kv, hidden),
                                               (hidden, hidden), (hidden,), (ffn, hidden), (ffn, hidden), (hidden, ffn)]):
            shapes[f"blk.{layer}.{name}.weight"] = shape
    tensors = {t.name: t for t in reader.tensors}
    assert tensors.keys() == shapes.keys()
    for name, shape in shapes.items():
        assert tuple(int(n) for n in reversed(tensors[name].shape)) == shape, name  # ggml lists dims inner first
        assert tensors[name].tensor_type.name == ("F32" if len(shape) == 1 else weight_type), name

    def field(key):
        return reader.fields[key].contents()

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    vocab_in_order = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    assert field("llama.context_length") == 2048 and field("llama.embedding_length") == hidden
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.tokens") == vocab_in_order
    assert field("tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # the three specials are control tokens
    merges = json.loads((tiny_model / "tokenizer.json").read_text())["model"]["merges"]
    assert field("tokenizer.ggml.merges") == [" ".join(pair) if isinstance(pair, list) else pair for pair in merges]
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.padding_token_id") == tokenizer.eos_token_id
    assert field("tokenizer.ggml.add_bos_token") is False  # the HF tokenizer adds no BOS either
    assert field("tokenizer.chat_template") == (tiny_model / "chat_template.jinja").read_text()

    record = json.loads((out / "export.json").read_text())
    assert record["readback"]["tensors"] == 21 and not record["readback"]["problems"]
    assert record["readback"]["max_relative_error"] < to_gguf.READBACK_TOLERANCE[quant]


def test_modelfile_uses_the_chat_template_and_stops_at_end_of_turn(exported):
    assert (exported("f16") / "Modelfile").read_text() == (
        'FROM ./model-f16.gguf\n\n'
        'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n'
        '{{ else }}<|im_start|>user\n{{ end }}{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n'
        '{{ .Response }}<|im_end|>\n"""\n\n'
        'PARAMETER stop "<|im_end|>"\n')


def test_permute_turns_rotate_half_rope_into_interleaved_rope():
    """Attention scores must not change: rotating HF's q/k with rotate-half RoPE must equal rotating the
    permuted rows with llama.cpp's adjacent-pair RoPE (up to the same row order on q and k)."""
    heads, head_dim, position = 2, 8, 5
    weight = torch.randn(heads * head_dim, 12)
    x = torch.randn(12)
    angles = position / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)

    def rotate_half_rope(v):  # transformers' Llama
        v = v.view(heads, head_dim)
        cos, sin = torch.cat([angles.cos()] * 2), torch.cat([angles.sin()] * 2)
        rotated = torch.cat([-v[:, head_dim // 2:], v[:, : head_dim // 2]], dim=1)
        return (v * cos + rotated * sin).reshape(-1)

    def interleaved_rope(v):  # llama.cpp's `llama` architecture
        pairs = v.view(heads, head_dim // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).reshape(-1)

    hf = rotate_half_rope(weight @ x)
    ours = interleaved_rope(torch.from_numpy(to_gguf.permute(weight.numpy(), heads)) @ x)
    assert torch.allclose(ours, torch.from_numpy(to_gguf.permute(hf[:, None].numpy(), heads))[:, 0], atol=1e-5)
    assert not torch.allclose(interleaved_rope(weight @ x), rotate_half_rope(weight @ x), atol=1e-3)


def test_unsupported_architecture_and_tokenizer_are_refused_before_merging(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}, "decoder": None}))
    with pytest.raises(TuneError) as caught:
        to_gguf.check_supported({"architectures": ["GPT2LMHeadModel"]}, tmp_path)
    assert [line.split(":")[0] for line in caught.value.problems] == ["--format gguf", "--format gguf"]
    assert "GPT2LMHeadModel is not supported" in caught.value.problems[0]
    assert "SentencePiece" in caught.value.problems[1]


def test_llama_cpp_greedy_tokens_match_the_merged_model(exported, trained, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (builds ~5 min) to run")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((exported("f16") / "export.json").read_text())
    assert record["verification"][-1]["what"] == "gguf f16 (llama.cpp)" and record["verification"][-1]["ok"]
    merged = tmp_path / "merged"
    pipeline.merge(trained("lora"), merged, verify=False, echo=lambda line: None)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        hf = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                            pad_token_id=tokenizer.eos_token_id, eos_token_id=None)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(model_path=str(exported("f16") / "model-f16.gguf"), n_ctx=128, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids  # same tokenizer in the file
    cpp = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        cpp.append(token)
        if len(cpp) == 8:
            break
    llm.close()
    assert cpp == hf


def test_read_back_holds_one_checkpoint_tensor_at_a_time(tiny_model, tmp_path, monkeypatch):
    # An 8B export held whole in float32 to be checked needs ~32 GB of RAM; the writer streams, so must this.
    import weakref

    path = tmp_path / "model-f16.gguf"
    to_gguf.write(tiny_model, path, "f16", "tiny", [])
    alive, most = set(), []
    real = to_gguf.gguf_tensors

    def watched(merged_dir, config):
        for name, data in real(merged_dir, config):
            alive.add(name)
            weakref.finalize(data, alive.discard, name)
            most.append(len(alive))
            yield name, data

    monkeypatch.setattr(to_gguf, "gguf_tensors", watched)
    report = to_gguf.read_back(path, tiny_model, "f16")
    assert (report["tensors"], report["problems"]) == (21, [])
    assert len(most) == 21 and max(most) <= 2  # the one being checked, and the previous one until it is replaced
