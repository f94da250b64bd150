"""Every method's run deploys like its family: GRPO, KTO and ORPO runs merge (logits verified), export to
GGUF and generate like an SFT run; a reward run merges into a one-score classifier that scores exactly as
the run did, exports as an adapter, and refuses GGUF and generation in one line."""

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, write_recipe
from tests.train.test_grpo import PROMPTS
from tune import recipe as recipe_io
from tune.cli import app
from tune.train.methods import METHODS

RUNS = {
    "grpo": {"data": {"train": str(PROMPTS), "format": "prompt"}, "reward": {"functions": ["exact_answer"]},
             "grpo": {"num_generations": 4, "max_completion_length": 8}},
    "kto": {"data": {"train": str(REPO / "data_templates" / "unpaired.jsonl"), "format": "unpaired"}},
    "orpo": {"data": {"train": str(REPO / "data_templates" / "preference.jsonl"), "format": "preference"}},
    "reward": {"data": {"train": str(REPO / "data_templates" / "preference.jsonl"), "format": "preference"}},
}


def cli(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert "Traceback" not in result.output + result.stderr
    return result


def trained(method, tmp_path):
    sections = {k: dict(v) for k, v in RUNS[method].items()}
    sections["train"] = {"method": method, "max_steps": 2, "batch_size": 8}
    path = write_recipe(tmp_path / "r.yaml", **sections)
    METHODS[method](recipe_io.load(path), path, echo=lambda line: None)
    return tmp_path / "out"


@pytest.mark.parametrize("method", ["grpo", "kto", "orpo"])
def test_policy_runs_merge_export_and_generate(method, tiny_model, tmp_path):
    run = trained(method, tmp_path)
    merged = cli("merge", run, tmp_path / "merged")
    assert merged.exit_code == 0 and "verify merged: max |logit diff|" in merged.output, merged.output + merged.stderr
    exported = cli("export", run, tmp_path / "gguf", "-f", "gguf", "--quant", "f16")
    assert exported.exit_code == 0, exported.output + exported.stderr
    assert (tmp_path / "gguf" / "model-f16.gguf").is_file()
    answered = cli("generate", run, "--prompt", "What is 2 plus 2?", "--max-new-tokens", "4")
    assert answered.exit_code == 0, answered.output + answered.stderr


def test_a_reward_run_merges_into_a_classifier_that_scores_as_the_run_did(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tune.infer.reward_model import load_reward_model, score

    run = trained("reward", tmp_path)
    assert cli("merge", run, tmp_path / "merged").exit_code == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert merged.config.architectures == ["LlamaForSequenceClassification"] and merged.config.num_labels == 1
    conversation = [[{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Nile."}]]
    model, run_tokenizer, max_length = load_reward_model(run)
    assert score(merged, tokenizer, conversation, max_length) == pytest.approx(
        score(model, run_tokenizer, conversation, max_length), abs=1e-4)

    assert cli("export", run, tmp_path / "adapter", "-f", "adapter").exit_code == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    refused = cli("export", run, tmp_path / "gguf", "-f", "gguf")
    assert refused.exit_code == 2 and refused.stderr == (
        f"--format: gguf: {run} is a classifier (reward run) and llama.cpp runs causal language models; export it "
        "with --format adapter or merged\n")
    refused = cli("generate", run, "--prompt", "hi")
    assert refused.exit_code == 2 and refused.stderr == (
        f"{run}: a classifier (train.method: classify or reward) scores text and does not write it; use "
        f"`tune predict {run} --data FILE --out FILE`\n")
