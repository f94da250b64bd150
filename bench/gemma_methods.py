"""Each method on Gemma 3 270M (base, 262k vocabulary), as a user runs it: `tune run` in its own process per
method, on the bundled example data, and what run.json records: steps, training seconds, trained tokens/s,
peak resident memory, and the loss (or, for GRPO, the reward) at the first and last step. SmolLM2-135M-Instruct
runs the same recipes beside it (--models), so each number has a reference on the same machine.

    python bench/gemma_methods.py                       # ~12 minutes on 2 idle CPU cores
    python bench/gemma_methods.py --only sft-text,dpo --models gemma3-270m

Needs `tune models get gemma3-270m` (and smollm2-135m-instruct). Gemma has no chat template, so the
instruction, preference and prompt data use ChatML on both models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data_templates"
METHODS = {
    # raw text: the bundled paragraphs, 128-token blocks
    "sft-text": {"data": {"train": str(DATA / "completion.jsonl"), "format": "completion", "max_length": 128},
                 "train": {"max_steps": 20, "batch_size": 2, "learning_rate": 5e-4}},
    "sft-instruction": {"data": {"train": str(DATA / "instruction.jsonl"), "max_length": 128, "template": "chatml"},
                        "train": {"max_steps": 20, "batch_size": 4, "learning_rate": 5e-4}},
    "dpo": {"data": {"train": str(DATA / "preference.jsonl"), "format": "preference", "max_length": 128,
                     "template": "chatml"},
            "train": {"method": "dpo", "max_steps": 10, "batch_size": 2, "learning_rate": 5e-4}},
    "grpo": {"data": {"train": str(DATA / "smollm2-grpo" / "train.jsonl"), "format": "prompt", "max_length": 96,
                      "template": "chatml"},
             "reward": {"functions": [{"function": "max_words", "limit": 8}]},
             "grpo": {"num_generations": 4, "max_completion_length": 24},
             "train": {"method": "grpo", "max_steps": 12, "batch_size": 8, "learning_rate": 3e-4}},
}


def run(model: str, method: str, folder: Path) -> dict:
    recipe = {"model": {"name": model, "dtype": "auto"}, "adapter": {"r": 8}, **METHODS[method],
              "output": {"dir": str(folder / "out")}}
    recipe["train"] = recipe["train"] | {"logging_steps": 1}
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tune", "run", str(folder / "r.yaml")], cwd=folder,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{model} {method} failed:\n{done.stderr[-3000:]}")
    record = json.loads((folder / "out" / "run.json").read_text())
    logged = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    key = "reward" if method == "grpo" else "loss"
    values = [row[key] for row in logged if key in row]
    first, last = values[:3], values[-3:]  # a mean of three steps: one step's reward is a handful of replies
    return {"model": model, "method": method, "steps": record["steps"], "train_s": record["train_seconds"],
            "wall_s": round(wall, 1), "tokens_per_s": record.get("trained_tokens_per_second"),
            "peak_rss_gb": (record.get("peak_rss_bytes") or 0) / 1e9, "measure": key,
            "first": sum(first) / len(first) if first else None, "last": sum(last) / len(last) if last else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m-instruct")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gemma-methods-") as scratch:
        for method in args.only.split(","):
            for model in args.models.split(","):
                folder = Path(scratch) / f"{model}-{method}"
                folder.mkdir()
                rows.append(run(model, method, folder))
                print(json.dumps(rows[-1]), flush=True)
    print("| method | model | steps | train s | s/step | trained tokens/s | peak RSS | first 3 -> last 3 steps |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        change = "" if row["first"] is None else f"{row['measure']} {row['first']:.3f} -> {row['last']:.3f}"
        tokens = f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] else ""
        print(f"| {row['method']} | {row['model']} | {row['steps']} | {row['train_s']:.0f} | "
              f"{row['train_s'] / row['steps']:.1f} | {tokens} | {row['peak_rss_gb']:.2f} GB | {change} |")


if __name__ == "__main__":
    main()
