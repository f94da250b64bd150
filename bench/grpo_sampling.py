"""GRPO's sampling on the CPU: the replies of one step (prompts x num_generations) generated in one batched
`generate` call, in float32 (what TRL's GRPOTrainer does on a CPU) against under bf16 autocast (what tune
does where the CPU has AVX512-BF16, as its training does). Prints generated tokens/s of each and the ratio.

    python bench/grpo_sampling.py [--prompts 2] [--generations 8] [--max-new-tokens 48] [--repeats 3]

Uses SmolLM2-135M-Instruct converted by `tune models get smollm2-135m-instruct` and the prompts of
recipes/smollm2-grpo.yaml. On a GPU, GRPO samples with vLLM when installed (grpo.generation: auto);
this script measures the CPU path only."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.models.resolve import packaged_gguf
    from tune.models.gguf import hf_folder

    folder = hf_folder(packaged_gguf("smollm2-135m-instruct"), "smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in (REPO / "data_templates/smollm2-grpo/train.jsonl").read_text().splitlines()]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                           add_generation_prompt=True) for row in rows[:args.prompts]]
    batch = tokenizer([t for t in texts for _ in range(args.generations)], return_tensors="pt", padding=True,
                      add_special_tokens=False)
    bf16 = torch.cpu._is_avx512_bf16_supported()
    print(f"{args.prompts} prompts x {args.generations} replies, up to {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, AVX512-BF16: {bf16}")

    def sample(autocast: bool) -> float:
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model.generate(**batch, do_sample=True, temperature=0.9, max_new_tokens=args.max_new_tokens,
                                 min_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        tokens = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
        return tokens / (time.perf_counter() - started)

    sample(False)  # warm-up
    rates = {"float32 (TRL on a CPU)": [], "bf16 autocast (tune)": []}
    for _ in range(args.repeats):  # alternate, so load changes hit both alike
        rates["float32 (TRL on a CPU)"].append(sample(False))
        rates["bf16 autocast (tune)"].append(sample(True))
    base = statistics.median(rates["float32 (TRL on a CPU)"])
    print(f"{'sampling':<26}{'tokens/s (median)':>18}{'runs':>26}{'vs float32':>12}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<26}{median:>18.0f}{', '.join(f'{v:.0f}' for v in values):>26}{median / base:>11.2f}x")


if __name__ == "__main__":
    main()
