"""The output layer alone on a CPU: TRL 1.16's fused LM head kernel, as `add_fused_lm_head` runs it off
Triton devices (every position, tiles of 4096 tokens x 32k vocabulary entries, recomputed in backward),
against tune's compact head (tune/train/lm_head.py: only the positions that carry loss, gradient taken
in the forward pass). Same hidden states, head weight and loss; prints forward and backward seconds
(median of repeats), the ratio, and the largest difference of the two losses and hidden-state gradients.

    python bench/lm_head.py [--positions 2048] [--vocab 49152] [--hidden 576] [--loss-share 0.46] [--repeats 3]

Defaults: one packed 2 x 1024 batch of SmolLM2-135M's shape (hidden 576, 49,152 vocabulary entries) with
the bench/sft_throughput.py data's share of loss positions; random weights (the kernel's cost does not
depend on their values). Runs under bf16 autocast when the CPU has AVX512-BF16, as training does."""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--loss-share", type=float, default=0.46)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from tune.train.lm_head import CompactLogProb

    torch.manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden) * 0.02
    hidden = torch.randn(args.positions, args.hidden, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.positions,))
    mask = torch.rand(args.positions) < args.loss_share
    autocast = torch.cpu._is_avx512_bf16_supported()

    def trl():
        per_token = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE,
                                                 None, 1.0, ("log_probs", "entropy", "is_top1"))
        return -(per_token[0] * mask).sum() / mask.sum()

    def tune():
        return -CompactLogProb.apply(hidden[mask], weight, None, targets[mask])[0].sum() / mask.sum()

    times, results = {"trl": [], "tune": []}, {}
    for _ in range(args.repeats):
        for name, loss_of in (("trl", trl), ("tune", tune)):
            hidden.grad = None
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_of()
            forward = time.perf_counter() - started
            loss.backward()
            times[name].append((forward, time.perf_counter() - started - forward))
            results[name] = (loss.item(), hidden.grad.clone())

    print(f"{args.positions} positions ({mask.sum().item()} carry loss), vocabulary {args.vocab}, hidden "
          f"{args.hidden}, {'bf16 autocast' if autocast else 'float32'}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats}")
    print("| head | forward s | backward s | total s | speed-up |")
    print("|---|---|---|---|---|")
    total = {}
    for name in ("trl", "tune"):
        forward = statistics.median(t[0] for t in times[name])
        backward = statistics.median(t[1] for t in times[name])
        total[name] = forward + backward
        print(f"| {name} | {forward:.2f} | {backward:.2f} | {total[name]:.2f} | {total['trl'] / total[name]:.2f}x |")
    print(f"loss difference {abs(results['trl'][0] - results['tune'][0]):.2e}, largest gradient difference "
          f"{(results['trl'][1] - results['tune'][1]).abs().max().item():.2e} "
          f"(largest gradient {results['trl'][1].abs().max().item():.2e})")


if __name__ == "__main__":
    main()
