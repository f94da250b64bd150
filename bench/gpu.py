"""GPU benchmarks for one lease: `tune plan`'s estimate against measured peaks, and SFT throughput of
`tune run` against a plain TRL script, on Llama-3.2-1B- and Llama-3.1-8B-shaped random models.

Models are built from the published configs (shapes only: random weights in bf16, a small local tokenizer
whose ids all fall inside the 128,256-row vocabulary), saved once, and loaded by every contender from disk.

plan:  for each model, quantization (bf16 / nf4), batch x length and gradient-checkpointing setting, one
       `tune run` of 3 optimizer steps on rows that fill max_length (run.json records
       torch.cuda.max_memory_allocated()) beside `tune.plan.estimate` for the same recipe.
speed: one epoch over the same log-normal instruction data (16-1024 tokens, like chat; bench/sft_throughput.py
       makes it) through
       - tune:        packing (BFD, padding-free), bf16, batch 2 packed rows of 1024, no checkpointing, no Liger;
       - tune-liger:  the same with train.use_liger_kernel (tune's default, auto, when liger-kernel is installed);
       - trl-default: TRL's docs script at SFTConfig defaults (batch 8 padded, bf16, gradient checkpointing);
       - trl-best:    the same script with BFD packing, padding-free, batch 2, no checkpointing, Liger if installed.
       Trained tokens/s counts loss-carrying labels over trainer.train() seconds. MFU counts the useful
       FLOPs of every real (non-padding) token: 4 x frozen linear parameters (forward + input gradients),
       6 x LoRA parameters, and causal attention (6 x hidden x length^2 per example per layer, fwd + bwd),
       over the GPU's dense bf16 peak (989 TFLOP/s for H100/H200).

    python bench/gpu.py --models 1b --parts plan,speed --out /tmp/gpu-bench
    python bench/gpu.py --models tiny --parts plan,speed      # check the script itself on a CPU
    python bench/gpu.py --replan bench/results/h100-*.json    # saved tables, plans re-estimated (no GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import PLAIN, RANK, make_data, rendered_length  # noqa: E402

LLAMA = dict(vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
             num_attention_heads=32, num_key_value_heads=8)
SHAPES = {
    "1b": dict(LLAMA, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, tie_word_embeddings=True),
    "8b": dict(LLAMA, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, tie_word_embeddings=False),
    "tiny": dict(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
}
# (quantization, batch, length, checkpointing) measured against the plan, per model
PLAN_CASES = {
    "1b": [(q, b, n, c) for q in ("none", "nf4") for b, n in ((1, 512), (4, 2048)) for c in (False, True)],
    "8b": [("none", 2, 2048, True), ("nf4", 2, 2048, True), ("none", 2, 2048, False)],
    "tiny": [("none", 2, 256, c) for c in (False, True)],
}
SPEED_EXAMPLES = {"1b": 512, "8b": 128, "tiny": 16}
MAX_LENGTH, PACKED_BATCH, PEAK_FLOPS = 1024, 2, 989e12
GiB = 2**30


def build_model(shape: str, folder: Path) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from tune.models.tiny import build_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer(1024)
    config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialising 8B parameters on the CPU takes minutes; on the GPU, seconds
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache() if device == "cuda" else None
    return folder


def tune_run(recipe: dict, work: Path, name: str, env: dict) -> tuple[dict | None, str]:
    path = work / f"{name}.json"
    recipe = json.loads(json.dumps(recipe))
    recipe["output"] = {"dir": str(work / name)}
    path.write_text(json.dumps(recipe))
    proc = subprocess.run([sys.executable, "-m", "tune", "run", str(path), "--overwrite"], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        return None, (proc.stdout + proc.stderr)[-1500:]
    return json.loads((work / name / "run.json").read_text()), proc.stdout


def plan_part(shape: str, model: Path, work: Path, env: dict, quantizations: list[str]) -> list[dict]:
    words = " ".join(f"w{i % 97}" for i in range(6000))  # far over max_length: every row is truncated to it
    data = work / "long.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"{i} {words[:200]}", "output": words}) + "\n"
                            for i in range(16))
                    + '{"instruction": "hi", "output": "short: tune refuses data where every row is too long"}\n')
    rows = []
    for quantization, batch, length, checkpointing in PLAN_CASES[shape]:
        if quantization not in quantizations:
            continue
        recipe, plan = planned(model, data, work, quantization, batch, length, checkpointing)
        name = f"plan-{shape}-{quantization}-{batch}x{length}-{'ckpt' if checkpointing else 'nockpt'}"
        started = time.perf_counter()
        summary, log = tune_run(recipe, work, name, env)
        measured = summary and summary.get("peak_gpu_memory_bytes")
        row = {"model": shape, "quantization": quantization, "batch": batch, "length": length,
               "checkpointing": checkpointing, "planned": plan.peak, "measured": measured,
               "planned_activations": plan.batch_size * plan.activations_per_example + plan.head_workspace,
               "planned_fixed": plan.fixed - plan.head_workspace, "seconds": round(time.perf_counter() - started, 1),
               "error": None if summary else log.strip().splitlines()[-1][:300]}
        rows.append(row)
        print("PLAN " + json.dumps(row), flush=True)
    return rows


def planned(model: Path, data: Path, work: Path, quantization: str, batch: int, length: int, checkpointing: bool):
    from tune.plan import memory as planner
    from tune import recipe as recipe_io

    recipe = {
        "model": {"name": str(model), "dtype": "auto", "quantization": quantization},
        "data": {"train": str(data), "max_length": length, "overlength": "truncate"},
        "adapter": {"r": RANK, "alpha": 2 * RANK, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"max_steps": 3, "batch_size": batch, "gradient_checkpointing": checkpointing,
                  "logging_steps": 1, "save_steps": 1000},
    }
    (work / "plan.json").write_text(json.dumps({**recipe, "output": {"dir": str(work / "unused")}}))
    return recipe, planner.estimate(recipe_io.load(work / "plan.json"))


def replan(paths: list[Path], work: Path) -> tuple[list[dict], list[dict]]:
    """Saved results with their plans re-estimated by today's planner (config-only model folders)."""
    from transformers import LlamaConfig

    plan_rows, speed_rows = [], []
    for path in paths:
        saved = json.loads(path.read_text())
        speed_rows += saved["speed"]
        for row in saved["plan"]:
            folder = work / f"config-{row['model']}"
            LlamaConfig(bos_token_id=0, eos_token_id=1, **SHAPES[row["model"]]).save_pretrained(folder)
            _, plan = planned(folder, work / "unused.jsonl", work, row["quantization"], row["batch"], row["length"],
                              row["checkpointing"])
            plan_rows.append({**row, "planned": plan.peak})
    return plan_rows, speed_rows


def flops_per_example(config, lora_params: int, lengths: list[int]) -> float:
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * config.vocab_size
    return sum(n * (4 * linear + 6 * lora_params) + layers * 6 * h * n * n for n in lengths)


def speed_part(shape: str, model: Path, work: Path, env: dict, liger: bool) -> list[dict]:
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = make_data(tokenizer, SPEED_EXAMPLES[shape], seed=0)
    (work / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (work / "chat.jsonl").write_text("".join(json.dumps({
        "prompt": [{"role": "user", "content": r["instruction"]}],
        "completion": [{"role": "assistant", "content": r["output"]}]}) + "\n" for r in rows))
    lengths = [min(MAX_LENGTH, rendered_length(tokenizer, row)) for row in rows]
    recipe = {
        "model": {"name": str(model), "dtype": "auto"},
        "data": {"train": str(work / "data.jsonl"), "max_length": MAX_LENGTH, "packing": True},
        "adapter": {"r": RANK, "alpha": 2 * RANK, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"epochs": 1, "batch_size": PACKED_BATCH, "learning_rate": 2e-4, "logging_steps": 10,
                  "save_steps": 100000, "use_liger_kernel": False},
    }
    best = {"packing": True, "padding_free": True, "per_device_train_batch_size": PACKED_BATCH,
            "gradient_checkpointing": False, "max_length": MAX_LENGTH, "save_strategy": "no"}
    import torch

    cpu = {} if torch.cuda.is_available() else {"use_cpu": True}  # only when checking the script on a CPU
    contenders = {"tune": recipe, "trl-default": {**cpu, "save_strategy": "no"},
                  "trl-best": {**cpu, **best, "use_liger_kernel": liger}}
    if liger:
        contenders["tune-liger"] = {**recipe, "train": {**recipe["train"], "use_liger_kernel": True}}
    config = AutoConfig.from_pretrained(model)
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    # r x (in + out) for q, k, v, o, gate, up, down in every layer
    lora = config.num_hidden_layers * RANK * (9 * config.hidden_size + 2 * kv + 3 * config.intermediate_size)
    useful = flops_per_example(config, lora, lengths)
    results = []
    for name, settings in contenders.items():
        started = time.perf_counter()
        if name.startswith("tune"):
            summary, log = tune_run(settings, work, f"speed-{shape}-{name}", env)
            result = summary and {"seconds": summary["train_seconds"], "steps": summary["steps"],
                                  "trained_tokens": int(re.search(r"(\d+) trained tokens", log).group(1)),
                                  "peak_gpu_memory_bytes": summary.get("peak_gpu_memory_bytes")}
        else:
            proc = subprocess.run([sys.executable, "-c", PLAIN, str(model), str(work / "chat.jsonl"),
                                   str(work / f"speed-{shape}-{name}"), json.dumps(settings)],
                                  capture_output=True, text=True, env=env)
            log = (proc.stdout + proc.stderr)[-1500:]
            result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0]) if "RESULT " in proc.stdout else None
        row = {"model": shape, "run": name, "wall": round(time.perf_counter() - started, 1), "error": None}
        if result:
            row.update(result, tokens_per_s=result["trained_tokens"] / result["seconds"],
                       mfu=useful / result["seconds"] / PEAK_FLOPS)
        else:
            row["error"] = log.strip().splitlines()[-1][:300] if log.strip() else "failed"
        results.append(row)
        print("SPEED " + json.dumps(row), flush=True)
    return results


def tables(plan_rows: list[dict], speed_rows: list[dict]) -> str:
    lines = []
    if plan_rows:
        lines += ["| model | quantization | batch x tokens | checkpointing | planned peak | measured peak | error |",
                  "|---|---|---|---|---|---|---|"]
        for r in plan_rows:
            measured = f"{r['measured'] / GiB:.2f} GiB" if r["measured"] else f"failed: {r['error']}"
            error = f"{(r['planned'] - r['measured']) / r['measured']:+.1%}" if r["measured"] else ""
            lines.append(f"| {r['model']} | {r['quantization']} | {r['batch']} x {r['length']} | "
                         f"{'on' if r['checkpointing'] else 'off'} | {r['planned'] / GiB:.2f} GiB | {measured} | {error} |")
    if speed_rows:
        lines += ["", "| model | run | trained tokens/s | vs trl-default | MFU | peak memory | train s | steps |",
                  "|---|---|---|---|---|---|---|---|"]
        for shape in dict.fromkeys(r["model"] for r in speed_rows):
            rows = [r for r in speed_rows if r["model"] == shape]
            base = next((r.get("tokens_per_s") for r in rows if r["run"] == "trl-default"), None)
            for r in rows:
                if r["error"]:
                    lines.append(f"| {shape} | {r['run']} | failed: {r['error']} | | | | | |")
                    continue
                ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
                peak = f"{r['peak_gpu_memory_bytes'] / GiB:.1f} GiB" if r.get("peak_gpu_memory_bytes") else "-"
                lines.append(f"| {shape} | {r['run']} | {r['tokens_per_s']:.0f} | {ratio} | {r['mfu']:.1%} | {peak} | "
                             f"{r['seconds']:.1f} | {r['steps']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1b,8b")
    parser.add_argument("--parts", default="plan,speed")
    parser.add_argument("--quantization", default="none,nf4", help="plan cases to measure")
    parser.add_argument("--out", type=Path, default=Path("gpu-bench"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tune-gpu-bench"))
    parser.add_argument("--replan", type=Path, nargs="*", help="print the tables of saved results (bench/results), "
                        "re-estimating each plan with the current planner, and exit")
    args = parser.parse_args()
    if args.replan:
        args.work.mkdir(parents=True, exist_ok=True)
        print(tables(*replan(args.replan, args.work)))
        return
    import importlib.util

    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNE_HOME": str(args.work / "home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    liger = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}; "
          f"liger {'yes' if liger else 'no'}", flush=True)
    plan_rows, speed_rows = [], []
    for shape in args.models.split(","):
        started = time.perf_counter()
        model = build_model(shape, args.work / f"llama-{shape}")
        print(f"{shape}: model ready in {time.perf_counter() - started:.0f} s", flush=True)
        if "speed" in args.parts:
            speed_rows += speed_part(shape, model, args.work, env, liger)
        if "plan" in args.parts:
            plan_rows += plan_part(shape, model, args.work, env, args.quantization.split(","))
        (args.out / "gpu-bench.json").write_text(json.dumps({"plan": plan_rows, "speed": speed_rows}, indent=1))
    print(tables(plan_rows, speed_rows))


if __name__ == "__main__":
    main()
