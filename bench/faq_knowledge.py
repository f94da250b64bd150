"""Knowledge that generalizes: an FAQ trained by `tune run` under several recipes, each run's adapter then
scored outside tune (plain transformers + PEFT, greedy, the chat template) on the FAQ's own questions, on
hand-written rewordings the run never saw, on reverse questions, and on general questions the base model
answers right (kept share = forgetting). Prints one table, each row with its wall time.

An FAQ file holds one fact per row: {question, answer, expected, rewordings: [...], reverse?: {question,
expected}}. Bundled: bench/faq/quillnote.jsonl (a made-up note app, written for this benchmark),
bench/faq/harbourline.jsonl, bench/faq/kestrel.jsonl and bench/faq/brackenford.jsonl (a ferry line, an
observatory and a library, written apart from the method's settings) and, built from data_templates/smollm2-domain, the co-op of the demo recipe (--faq coop).

    python bench/faq_knowledge.py --faq bench/faq/quillnote.jsonl --variants plain,augment,augment+guard

The runs use recipes/smollm2-domain.yaml with only data, probes and the variant's keys changed, so what is
measured is what a user gets when they swap in their FAQ. `--in-context` adds the base model with every
answer of the FAQ in its system prompt (no training): how hard the FAQ's wordings are for the model even
with the facts in view. Needs `tune models get smollm2-135m-instruct`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERAL = REPO / "data_templates" / "smollm2-domain" / "probes-general.jsonl"
# What each variant changes in recipes/smollm2-domain.yaml (which has augmentation and the guard on).
OFF = ["data.augment=null", "train.keep=final", "train.eval_steps=null"]
VARIANTS = {
    "plain": OFF + ["train.epochs=4"],  # the user's rows as they are, as the recipe trained them before
    "plain-auto": OFF,  # the same, trained as long as epochs: auto does without augmentation (16 passes)
    "rewordings": ["data.augment.statements=0", "train.keep=final", "train.eval_steps=null"],
    "augment": ["train.keep=final", "train.eval_steps=null"],  # + statements
    "augment+reverse": ["data.augment.reverse=2", "train.keep=final", "train.eval_steps=null"],
    "augment+guard": [],  # the recipe as bundled
    "augment+guard-frames": ["data.augment.frames=0"],  # the same without reframed questions
    "augment+guard-subject": ["data.augment.subject=false"],  # the same without the questions naming the subject
    "augment+guard+passages": ["data.augment.passages=4"],  # + each fact's statements in 4 passages of 4 facts
    "augment+guard+neftune": ["train.neftune_alpha=5"],  # + noise on the input embeddings while training
}


def base_folder() -> str:
    """SmolLM2-135M-Instruct as `tune models get smollm2-135m-instruct` converted it into TUNE_HOME."""
    from tune.paths import models_dir

    return str(models_dir() / "smollm2-135m-instruct")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def coop_faq() -> list[dict]:
    folder = REPO / "data_templates" / "smollm2-domain"
    read = lambda name: read_jsonl(folder / name)  # noqa: E731
    trained, heldout = read("probes-trained.jsonl"), read("probes-heldout.jsonl")
    reverse = {row["from"]: row for row in read("probes-reverse.jsonl")}
    rows = []
    for row, probe, other in zip(read("faq.jsonl"), trained, heldout):
        fact = {"question": row["instruction"], "answer": row["output"], "expected": probe["expected"],
                "rewordings": [other["question"]]}
        if row["instruction"] in reverse:
            fact["reverse"] = {k: reverse[row["instruction"]][k] for k in ("question", "expected")}
        rows.append(fact)
    return rows


def write_inputs(faq: list[dict], folder: Path) -> None:
    lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    (folder / "faq.jsonl").write_text(lines({"instruction": f["question"], "output": f["answer"]} for f in faq))


def score_sets(faq: list[dict], general_check: Path | None = None) -> dict[str, list[tuple[str, list[str]]]]:
    expected = lambda value: value if isinstance(value, list) else [value]  # noqa: E731
    sets = {"trained": [(f["question"], expected(f["expected"])) for f in faq],
            "reworded": [(q, expected(f["expected"])) for f in faq for q in f["rewordings"]],
            "reverse": [(f["reverse"]["question"], expected(f["reverse"]["expected"])) for f in faq if "reverse" in f],
            "general": [(g["question"], expected(g["expected"])) for g in read_jsonl(GENERAL)]}
    if general_check is not None:  # general questions the run's guard never sees
        sets["general check"] = [(g["question"], expected(g["expected"])) for g in read_jsonl(general_check)]
    return sets


def answers(model, tokenizer, questions: list[str], system: str | None = None) -> list[str]:
    """Greedy answers with plain transformers: the chat template (with `system` as its system message when
    given), left padding, 48 new tokens."""
    import torch

    tokenizer.padding_side = "left"
    before = [{"role": "system", "content": system}] if system else []
    out = []
    for start in range(0, len(questions), 16):
        texts = [tokenizer.apply_chat_template(before + [{"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions[start:start + 16]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def scored_model(base_dir: str, run_dir: Path | None):
    """(model, tokenizer): the base in float32, with the run's adapter when given, as plain PEFT loads it."""
    import tune  # noqa: F401  (first: no hub kernels)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if run_dir is not None:
        model = PeftModel.from_pretrained(model, str(run_dir))
    return model.eval(), AutoTokenizer.from_pretrained(base_dir)


def score(base_dir: str, run_dir: Path | None, sets: dict, scales: tuple[float, ...] = (1.0,),
          system: str | None = None) -> list[dict[str, list[bool]]]:
    """Right or wrong per question of each set, for the adapter at each scale (LoRA B times the scale)."""
    from contextlib import nullcontext

    from peft.helpers import rescale_adapter_scale

    from tune.data.probes import contains  # whole words or numbers, case and spacing ignored

    model, tokenizer = scored_model(base_dir, run_dir)
    flat = [item for items in sets.values() for item in items]
    results = []
    for scale in scales:
        with rescale_adapter_scale(model, scale) if scale != 1.0 else nullcontext():
            said = iter(answers(model, tokenizer, [q for q, _ in flat], system))
        results.append({name: [contains(next(said), facts) for _, facts in items] for name, items in sets.items()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faq", default="bench/faq/quillnote.jsonl", help="an FAQ jsonl, or `coop` (the demo's)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--general-check", type=Path, help="a second set of general {question, expected} rows, "
                        "scored for the kept share but not given to the run (the guard selects on the bundled set)")
    parser.add_argument("--set", action="append", default=[], help="more recipe overrides for every run")
    parser.add_argument("--in-context", action="store_true", help="also score the base model with every answer of "
                        "the FAQ in its system prompt: what the model makes of the facts in front of it, no training")
    parser.add_argument("--scales", default="", help="also score each adapter scaled toward the base, e.g. 0.85,0.7 "
                        "(LoRA B times the factor, as the guard's last resort does)")
    args = parser.parse_args()
    faq = coop_faq() if args.faq == "coop" else read_jsonl(Path(args.faq))
    base_dir = base_folder()
    sets = score_sets(faq, args.general_check)
    work = Path(tempfile.mkdtemp(prefix="faq-bench-"))
    write_inputs(faq, work)
    base = score(base_dir, None, sets)[0]
    scales = (1.0, *(float(x) for x in args.scales.split(",") if x))
    print(f"FAQ {args.faq}: {len(faq)} facts; scored {', '.join(f'{k} {len(v)}' for k, v in sets.items())}")
    general = [name for name in ("general", "general check") if name in sets]  # what the kept share is scored on
    header = "| variant | trained | reworded (unseen) | reverse | general kept |"
    header += " check kept |" if len(general) > 1 else ""
    rows = [header + " run s | kept step |", "|---" * (header.count("|") + 1) + "|",
            f"| base model | {mean(base['trained'])} | {mean(base['reworded'])} | {mean(base['reverse'])} | "
            + " | ".join(f"{sum(base[k])}/{len(base[k])} right" for k in general)
            + " | | |"]
    if args.in_context:
        facts = "Answer from these facts.\n" + "\n".join(f["answer"] for f in faq)
        shown = score(base_dir, None, {k: sets[k] for k in ("trained", "reworded", "reverse")}, system=facts)[0]
        rows.append(f"| base model, the FAQ's answers in its system prompt | {mean(shown['trained'])} | "
                    f"{mean(shown['reworded'])} | {mean(shown['reverse'])} |" + " |" * len(general) + " | |")
        print(rows[-1], flush=True)
    for name in (args.variants.split(",") if args.variants else []):
        out = work / f"run-{name}"
        command = [sys.executable, "-m", "tune", "run", str(REPO / "recipes" / "smollm2-domain.yaml"),
                   "--set", f"data.train={work / 'faq.jsonl'}", "--set", "data.eval=null",
                   "--set", f"data.probes=[{GENERAL}]", "--set", f"output.dir={out}", "--set", "output.overwrite=true"]
        for override in VARIANTS[name] + args.set:
            command += ["--set", override]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - started
        if result.returncode:
            print(f"{name}: tune run failed:\n{result.stderr[-2000:]}")
            continue
        (work / f"{name}.log").write_text(result.stdout + result.stderr)
        summary = json.loads((out / "run.json").read_text())
        kept_step = (summary.get("kept") or "").split(":")[0].replace("kept ", "")
        for scale, tuned in zip(scales, score(base_dir, out, sets, scales)):
            kept = [kept_share(base[k], tuned[k]) for k in general]
            label = name if scale == 1.0 else f"{name}, adapter x{scale:g}"
            rows.append(f"| {label} | {mean(tuned['trained'])} | {mean(tuned['reworded'])} | {mean(tuned['reverse'])} | "
                        + " | ".join(kept) + (f" | {seconds:.0f} | {kept_step} |" if scale == 1.0 else " | | |"))
            print(rows[-1], flush=True)
    print("\n".join(rows))
    print(f"(runs and logs in {work})")


def kept_share(base: list[bool], tuned: list[bool]) -> str:
    kept = [t for b, t in zip(base, tuned) if b]
    return f"{sum(kept) / max(1, len(kept)):.2f}"


def mean(flags: list[bool]) -> str:
    return f"{sum(flags) / len(flags):.2f}" if flags else "n/a"


if __name__ == "__main__":
    main()
