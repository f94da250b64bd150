"""`tune plan`: parameter, weight and optimizer-state bytes equal what a real run of the tiny model holds
(counted from its tensors after one optimizer step), and the command prints a one-line error for bad input.
Activation figures are estimates (checked against H100 peaks in bench/README.md): only their shape is tested."""

import os
import subprocess
import sys

import pytest
import torch
from trl import SFTTrainer

from tests.conftest import write_recipe
from tune.plan import memory as planner
from tune import recipe as recipe_io
from tune.train.sft import train

CASES = {  # adapter, model, optimizer; r=64 puts some LoRA tensors over bitsandbytes' 4096-value 8-bit threshold
    "lora-adamw": ({"r": 8}, {}, "adamw_torch"),
    "dora-adamw": ({"r": 8, "method": "dora"}, {}, "adamw_torch"),
    "lora-r64-8bit-adam": ({"r": 64}, {}, "adamw_8bit"),
    "nf4-double-quant-8bit-adam": ({"r": 64}, {"quantization": "nf4", "double_quant": True}, "adamw_8bit"),
    "nf4-adamw": ({"r": 8}, {"quantization": "nf4", "double_quant": False}, "adamw_torch"),
    "tied-embeddings": ({"r": 8}, {"tied": True}, "adamw_torch"),  # one tensor shared by input and output
}


@pytest.fixture(scope="module")
def tied_model(tiny_model, tmp_path_factory):
    """The tiny model with its output head tied to its input embeddings, as Llama-3.2-1B has it."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    config.tie_word_embeddings = True
    folder = tmp_path_factory.mktemp("tied")
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


def one_step(tmp_path, monkeypatch, recipe):
    """Run tune's trainer for one optimizer step and keep the trainer."""
    seen = {}
    original = SFTTrainer.train

    def keep(self, *args, **kwargs):
        seen["trainer"] = self
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "train", keep)
    train(recipe, tmp_path / "r.yaml", echo=lambda line: None)
    return seen["trainer"]


def tensor_bytes(tensors) -> int:
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)}
    return sum(unique.values())


def frozen_tensors(model):
    import bitsandbytes as bnb

    for module in model.modules():
        yield from (p for p in module.parameters(recurse=False) if not p.requires_grad)
        yield from module.buffers(recurse=False)
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            yield from (state.absmax, state.code, state.offset)
            if state.nested:
                yield from (state.state2.absmax, state.state2.code)


@pytest.mark.parametrize("case", list(CASES))
def test_parameter_and_optimizer_bytes_are_exact(case, tiny_model, tmp_path, monkeypatch, request):
    adapter, model_keys, optimizer = CASES[case]
    if model_keys.get("tied"):
        model_keys = {"name": str(request.getfixturevalue("tied_model"))}
    path = write_recipe(tmp_path / "r.yaml", adapter=adapter, model=model_keys,
                        train={"max_steps": 1, "optimizer": optimizer, "batch_size": 2})
    recipe = recipe_io.load(path)
    plan = planner.estimate(recipe)
    trainer = one_step(tmp_path, monkeypatch, recipe_io.load(path))
    model = trainer.model

    trainable = [p for p in model.parameters() if p.requires_grad]
    assert plan.trainable_params == model.get_nb_trainable_parameters()[0] == sum(p.numel() for p in trainable)
    assert plan.adapter == tensor_bytes(trainable)
    assert plan.gradients == tensor_bytes(trainable)  # a gradient has its weight's shape and dtype
    assert plan.weights == tensor_bytes(frozen_tensors(model))
    states = [value for p in trainable for key, value in trainer.optimizer.state[p].items() if key != "step"]
    assert plan.optimizer == tensor_bytes(states)
    assert plan.optimizer_name == optimizer


def test_quantized_bytes_follow_bitsandbytes_layout():
    # 4096 weights: 2048 packed bytes; 64 blocks of 64 -> 64 uint8 absmax + 1 float32 second-level absmax,
    # the 256-entry second-level code and an offset, plus the 16-entry nf4 code.
    assert planner.quantized_bytes(4096, 64, "nf4", True) == 2048 + 64 + 4 + 1024 + 4 + 64
    assert planner.quantized_bytes(4096, 64, "nf4", False) == 2048 + 64 * 4 + 64
    assert planner.quantized_bytes(4096, 64, "int8", False) == 4096 + 64 * 4


def test_activations_scale_and_the_largest_batch_fits(tiny_model, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model={"dtype": "bfloat16"}, data={"max_length": 512})
    plain = planner.estimate(recipe_io.load(path))
    checkpointed = planner.estimate(recipe_io.load(path, ["train.gradient_checkpointing=true"]))
    assert checkpointed.activations_per_example < plain.activations_per_example
    assert checkpointed.activations_per_example_other == plain.activations_per_example
    longer = planner.estimate(recipe_io.load(path, ["data.max_length=1024"]))
    assert longer.activations_per_example == 2 * plain.activations_per_example  # fused attention: linear
    gpu = planner.parse_size("1GiB") + planner.RESERVE
    best = plain.largest_batch(gpu, plain.activations_per_example)
    assert best > 0
    assert plain.fixed + best * plain.activations_per_example + planner.RESERVE <= gpu
    assert plain.fixed + (best + 1) * plain.activations_per_example + planner.RESERVE > gpu


def test_the_logits_are_one_tile_with_the_chunked_loss_and_shown_whole_without(tiny_model, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model={"dtype": "bfloat16"}, data={"max_length": 8192},
                        train={"batch_size": 2})
    plan = planner.estimate(recipe_io.load(path))
    vocab = planner.load_config(recipe_io.load(path)).vocab_size
    # bf16 logits, their float32 copy, the float32 log-softmax and its gradient: 14 bytes an entry
    assert plan.full_logits == 2 * 8192 * vocab * 14
    assert plan.head_workspace == 4096 * vocab * 2  # one tile of TRL's kernel, whatever the batch
    assert plan.peak == plan.fixed + 2 * plan.activations_per_example and plan.fixed >= plan.head_workspace
    lines = planner.render(plan, None)
    assert any(line.strip().startswith("output layer: one tile of the chunked loss") for line in lines)
    assert any("without the chunked loss the logits alone would take" in line for line in lines)


@pytest.mark.parametrize("text, size", [("24GiB", 24 * 2**30), ("24GB", 24 * 2**30), ("80", 80 * 2**30),
                                        ("16000MiB", 16000 * 2**20), ("1.5 GiB", int(1.5 * 2**30))])
def test_parse_size(text, size):
    assert planner.parse_size(text) == size


def tune(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tune", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_plan(tiny_model, tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    result = tune("plan", path, "--gpu-memory", "24GiB")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plan: tiny-llama (llama, 2 layers, hidden 64), float32, quantization none, lora r=8")
    assert any(line.split()[:2] == ["adapter", "(19,456"] for line in lines)
    assert lines[-1].startswith("fits in 24.00 GiB") and "largest train.batch_size that fits:" in lines[-1]

    bad = tune("plan", path, "--gpu-memory", "lots")
    assert (bad.returncode, bad.stderr) == (2, "--gpu-memory: cannot read 'lots'; write it like 24GiB or 80GB\n")
    hub = tune("plan", path, "--set", "model.name=someone/not-cached-model")
    assert hub.returncode == 2 and len(hub.stderr.splitlines()) == 1
    assert hub.stderr.startswith("model.name: 'someone/not-cached-model' is a hub id and the hub cannot be reached")


def test_grpo_adds_the_generation_cache_and_the_completion_logits(tiny_model, tmp_path):
    from transformers import AutoConfig

    path = write_recipe(tmp_path / "r.yaml", model={"dtype": "bfloat16"},
                        data={"format": "prompt", "train": "prompts.jsonl", "max_length": 128},
                        train={"method": "grpo", "batch_size": 8, "gradient_accumulation": 2},
                        reward={"functions": ["exact_answer"]}, grpo={"max_completion_length": 64})
    plan = planner.estimate(recipe_io.load(path))
    config = AutoConfig.from_pretrained(tiny_model)
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    cache = 16 * (128 + 64) * config.num_hidden_layers * 2 * kv * 2  # 16 completions per generation batch
    logits = 8 * 64 * config.vocab_size * 4 * 2  # float32 logits and log-softmax of a training batch
    assert plan.sampling == cache + logits
    sft = planner.estimate(recipe_io.load(write_recipe(tmp_path / "s.yaml", model={"dtype": "bfloat16"},
                                                       data={"max_length": 192})))
    assert plan.activations_per_example == sft.activations_per_example  # a row: prompt cap + completion
    assert plan.peak == plan.fixed + 8 * plan.activations_per_example and plan.fixed >= cache + logits
