"""Peak memory and time of the shard-streamed merge against PEFT's in-memory merge.

Builds a random Llama checkpoint of 1.02 GB (float32) in 9 safetensors shards and a random rank-16
LoRA adapter on every linear layer, then merges it both ways, each in a fresh subprocess that reports its
own peak RSS. Both results are compared tensor by tensor at the end.

    python bench/merge_memory.py            # ~1-2 minutes on 2 CPU cores, ~3.5 GB of temp disk
    python bench/merge_memory.py --keep DIR # build into DIR and leave it there
    python bench/merge_memory.py --moe      # a random Qwen3-MoE of ~1.2 GB instead (16 experts, 8 layers),
                                            # rank-16 LoRA on attention and on the fused expert tensors
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, FFN, LAYERS, VOCAB, HEADS, KV_HEADS, RANK = 1024, 2816, 16, 32000, 16, 8, 16
SHARD_BYTES = 120_000_000  # 9 shards of the 1.02 GB model; the merges write shards of this size too

CHILD = r"""
import json, resource, sys, time
from tune.export import pipeline
started = time.perf_counter()
report = pipeline.merge(sys.argv[1], sys.argv[2], shard_size=sys.argv[3], verify=False,
                        in_memory=sys.argv[4] == "in-memory", echo=lambda line: None)
print(json.dumps({"seconds": time.perf_counter() - started, "method": report["method"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINE = r"""
import json, resource
import torch, transformers, peft, safetensors  # what every merge imports before touching weights
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}."
        shapes.update({
            prefix + "input_layernorm.weight": (HIDDEN,), prefix + "post_attention_layernorm.weight": (HIDDEN,),
            prefix + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), prefix + "self_attn.k_proj.weight": (kv, HIDDEN),
            prefix + "self_attn.v_proj.weight": (kv, HIDDEN), prefix + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            prefix + "mlp.gate_proj.weight": (FFN, HIDDEN), prefix + "mlp.up_proj.weight": (FFN, HIDDEN),
            prefix + "mlp.down_proj.weight": (HIDDEN, FFN),
        })
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def build(root: Path) -> tuple[Path, Path, int]:
    """Base checkpoint and adapter, written shard by shard so building needs little memory."""
    import torch
    from safetensors.torch import save_file

    base, adapter = root / "base", root / "adapter"
    base.mkdir(parents=True)
    adapter.mkdir()
    torch.manual_seed(0)
    shapes = tensor_shapes()
    groups, current, size = [], {}, 0
    for name, shape in shapes.items():
        nbytes = 4 * torch.Size(shape).numel()
        if current and size + nbytes > SHARD_BYTES:
            groups.append(current)
            current, size = {}, 0
        current[name] = shape
        size += nbytes
    groups.append(current)
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        file = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        save_file({name: torch.randn(shape) * 0.02 for name, shape in group.items()}, str(base / file),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    total = sum(4 * torch.Size(shape).numel() for shape in shapes.values())
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    (base / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "dtype": "float32"}))

    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora = {}
    for name, shape in shapes.items():
        if name.rsplit(".", 2)[-2] in targets:
            stem = "base_model.model." + name.removesuffix(".weight")
            lora[stem + ".lora_A.weight"] = torch.randn(RANK, shape[1]) * 0.01
            lora[stem + ".lora_B.weight"] = torch.randn(shape[0], RANK) * 0.01
    save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK, "lora_dropout": 0.0,
        "target_modules": list(targets), "bias": "none", "use_dora": False, "use_rslora": False,
        "base_model_name_or_path": str(base)}))
    (adapter / "recipe.yaml").write_text(f"model:\n  name: {base}\n  dtype: float32\n")
    return base, adapter, total


def build_moe(root: Path) -> tuple[Path, Path, int]:
    """A random Qwen3-MoE saved as transformers 5 saves it (one weight per expert on disk), and a random
    adapter on attention and on the fused expert tensors (PEFT's target_parameters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    base, adapter = root / "base", root / "adapter"
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, moe_intermediate_size=512,
                            num_hidden_layers=8, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                            head_dim=HIDDEN // HEADS, num_experts=16, num_experts_per_tok=2, decoder_sparse_step=1,
                            mlp_only_layers=[], tie_word_embeddings=False)
    model = Qwen3MoeForCausalLM(config)
    model.save_pretrained(base, max_shard_size=SHARD_BYTES)
    lora = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      target_parameters=["experts.gate_up_proj", "experts.down_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(adapter)
    (adapter / "recipe.yaml").write_text(f"model:\n  name: {base}\n  dtype: float32\n")
    return base, adapter, build_moe_size(root)


def build_moe_size(root: Path) -> int:
    return json.loads((root / "base" / "model.safetensors.index.json").read_text())["metadata"]["total_size"]


def run_child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path) -> tuple[int, float]:
    from safetensors import safe_open

    def files(folder):
        return json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]

    left, right, worst = files(a), files(b), 0.0
    assert left.keys() == right.keys()
    for name in left:
        with safe_open(a / left[name], "pt") as x, safe_open(b / right[name], "pt") as y:
            worst = max(worst, (x.get_tensor(name) - y.get_tensor(name)).abs().max().item())
    return len(left), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Build into this folder and keep it.")
    parser.add_argument("--moe", action="store_true", help="A random Qwen3-MoE with adapters on its experts.")
    parser.add_argument("--build-moe-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_moe_into:
        print(json.dumps([str(p) for p in build_moe(args.build_moe_into)[:2]] + [build_moe_size(args.build_moe_into)]))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="tune-merge-bench-"))
    started = time.perf_counter()
    if args.moe:  # built in its own process: a child's peak RSS counts the parent's at the fork (Linux)
        built = subprocess.run([sys.executable, __file__, "--build-moe-into", str(root)], capture_output=True, text=True)
        if built.returncode != 0:
            sys.exit(built.stderr)
        base, adapter, total = json.loads(built.stdout.strip().splitlines()[-1])
        base, adapter = Path(base), Path(adapter)
    else:
        base, adapter, total = build(root)
    shards = len(list(base.glob("*.safetensors")))
    what = "attention and the expert stacks of 8 layers" if args.moe else f"7 x {LAYERS} layers"
    print(f"base: {total / 1e9:.2f} GB float32 in {shards} shards, LoRA r={RANK} on {what} "
          f"(built in {time.perf_counter() - started:.0f} s)")
    floor = run_child(BASELINE)["peak_rss_mb"]
    results = {}
    for method in ("streamed", "in-memory"):
        results[method] = run_child(CHILD, str(adapter), str(root / f"out-{method}"), f"{SHARD_BYTES}", method)
        assert results[method]["method"] == method
    count, worst = same_tensors(root / "out-streamed", root / "out-in-memory")
    print(f"imports alone (torch, transformers, peft): peak RSS {floor:.0f} MB")
    print(f"{'merge':<10} {'peak RSS MB':>12} {'above imports':>14} {'seconds':>8}")
    for method, result in results.items():
        print(f"{method:<10} {result['peak_rss_mb']:>12.0f} {result['peak_rss_mb'] - floor:>14.0f} "
              f"{result['seconds']:>8.1f}")
    streamed, in_memory = results["streamed"], results["in-memory"]
    print(f"ratio in-memory / streamed: peak RSS {in_memory['peak_rss_mb'] / streamed['peak_rss_mb']:.2f}x "
          f"({(in_memory['peak_rss_mb'] - floor) / (streamed['peak_rss_mb'] - floor):.2f}x above imports), "
          f"time {in_memory['seconds'] / streamed['seconds']:.2f}x")
    print(f"outputs: {count} tensors, max |streamed - in-memory| = {worst:.1e}")
    if not args.keep:
        import shutil

        shutil.rmtree(root)


if __name__ == "__main__":
    main()
