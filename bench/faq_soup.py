"""Several runs of one FAQ averaged into one adapter, scored as bench/faq_knowledge.py scores a run: does the
mean of adapters trained with different seeds answer unseen wordings and keep the general answers better
than each of them? (Model soups, Wortsman et al., arXiv 2203.05482: fine-tuned weights from one pretrained
model average into a model at least as good as the members; docs/knowledge.md note 24.)

The average of LoRA deltas is exact at rank k*r: the members' A matrices stacked, their B matrices side by
side, each B over k (and optionally times `--scale`), with r and alpha times k so alpha/r is unchanged.

    python bench/faq_soup.py --faq bench/faq/harbourline.jsonl RUN_A RUN_B [--scale 1.25]

RUN_* are run folders (an adapter_model.safetensors and adapter_config.json each: the `run-augment+guard`
folder faq_knowledge.py prints), all with the same rank and targets. Prints one table row per member
and one for the average."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.faq_knowledge import base_folder, coop_faq, kept_share, mean, read_jsonl, score, score_sets  # noqa: E402


def average(runs: list[Path], out: Path, scale: float = 1.0) -> Path:
    """The members' mean LoRA delta (times `scale`) as one PEFT adapter folder at `out`."""
    import torch
    from safetensors.torch import load_file, save_file

    configs = [json.loads((run / "adapter_config.json").read_text()) for run in runs]
    if any(c.get(key) for c in configs for key in ("rank_pattern", "alpha_pattern", "use_rslora", "use_dora")):
        raise SystemExit("per-module ranks, rsLoRA and DoRA do not average by stacking the matrices; plain LoRA only")
    if any((c["r"], c["lora_alpha"]) != (configs[0]["r"], configs[0]["lora_alpha"]) for c in configs):
        raise SystemExit("the runs differ in rank or alpha; average runs of one recipe")
    states = [load_file(str(run / "adapter_model.safetensors")) for run in runs]
    if any(state.keys() != states[0].keys() for state in states):
        raise SystemExit("the runs' adapters target different modules; average runs of one recipe")
    k, merged = len(states), {}
    for key in states[0]:
        if "lora_A" in key:
            merged[key] = torch.cat([state[key] for state in states], 0)
        elif "lora_B" in key:
            merged[key] = torch.cat([state[key] * (scale / k) for state in states], 1)
        else:
            raise SystemExit(f"{key}: only LoRA A and B matrices can be averaged this way")
    config = configs[0]
    config["r"], config["lora_alpha"] = config["r"] * k, config["lora_alpha"] * k
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with an adapter each")
    parser.add_argument("--faq", required=True, help="the FAQ jsonl the runs trained on, or `coop`")
    parser.add_argument("--general-check", type=Path, default=Path(__file__).parent / "faq" / "general-check.jsonl")
    parser.add_argument("--scale", type=float, default=1.0, help="the average's delta times this")
    args = parser.parse_args()
    faq = coop_faq() if args.faq == "coop" else read_jsonl(Path(args.faq))
    sets = score_sets(faq, args.general_check)
    base_dir = base_folder()
    base = score(base_dir, None, sets)[0]
    soup = average(args.runs, Path(tempfile.mkdtemp(prefix="faq-soup-")), args.scale)
    print("| adapter | trained | reworded (unseen) | reverse | general kept | check kept |\n|---|---|---|---|---|---|")
    for label, folder in [*((str(run), run) for run in args.runs), (f"average of {len(args.runs)} x{args.scale:g}", soup)]:
        tuned = score(base_dir, folder, sets)[0]
        print(f"| {label} | {mean(tuned['trained'])} | {mean(tuned['reworded'])} | {mean(tuned['reverse'])} | "
              f"{kept_share(base['general'], tuned['general'])} | {kept_share(base['general check'], tuned['general check'])} |",
              flush=True)


if __name__ == "__main__":
    main()
