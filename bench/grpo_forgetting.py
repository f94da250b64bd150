"""Rewards without forgetting: a user's own reward (short answers, a hedge word, a figure) on everyday questions,
trained by `tune run recipes/smollm2-grpo.yaml` with only the data, the reward and each variant's keys
changed, then every kept adapter scored outside tune (plain transformers + PEFT, greedy, the chat template)
on 60 everyday questions the run never saw (the user's reward) and on general questions the guard never
saw (kept = the share of the base's right answers still right). Prints one table, each row with its time.

    python bench/grpo_forgetting.py --variants guard,rollback [--reward length|keyword|number]

The run's held-out prompts (24, half of them kept for its report) and its probes (22 general questions)
are disjoint from the scored ones. Needs `tune models get smollm2-135m-instruct`.
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
sys.path.insert(0, str(REPO / "bench"))
from faq_knowledge import answers, base_folder, scored_model  # noqa: E402  (the same loading and greedy answers as the FAQ benchmark)

REWARDS = {  # what a user who wants each thing writes; each is easy to win by gaming it
    "length": '''
def user_reward(completions, **kwargs):
    """1.0 up to 20 words, falling to 0 at 40: short answers."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if len(t.split()) <= 20 else max(0.0, (40 - len(t.split())) / 20) for t in texts]
''',
    "keyword": '''
import re

def user_reward(completions, **kwargs):
    """1.0 when the answer hedges (typically, usually, often, generally): 21% of the base's answers do."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if re.search(r"\\b(typically|usually|often|generally)\\b", t.lower()) else 0.0 for t in texts]
''',
    "number": '''
import re

def user_reward(completions, **kwargs):
    """1.0 when the answer states a figure in digits: 37% of the base's answers do."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if re.search(r"\\d", t) else 0.0 for t in texts]
''',
}
VARIANTS = {
    "guard": [],  # the bundled recipe's guard: evaluate every 10 steps, keep the best within the bar
    "rollback": ["grpo.rollback=0.5"],
    "beta": ["grpo.beta=0.1"],
    "lr-1e-4": ["train.learning_rate=1e-4"],
    "every-5": ["train.eval_steps=5"],
    "dr-grpo": ["grpo.loss_type=dr_grpo", "grpo.scale_rewards=none"],  # Dr. GRPO: no length or std normalization
    "rollback+every-5": ["grpo.rollback=0.5", "train.eval_steps=5"],
    "replay": ["grpo.replay=0.5"],
    "rollback+replay": ["grpo.rollback=0.5", "grpo.replay=0.5"],
}


def user_reward(kind: str):
    namespace: dict = {}
    exec(REWARDS[kind], namespace)  # the same source the runs load, applied to the scored answers
    return lambda text: namespace["user_reward"]([text])[0]


def inputs(folder: Path, kind: str) -> dict[str, list]:
    general = [json.loads(line) for line in (REPO / "data_templates" / "replay" / "general.jsonl").read_text().splitlines()]
    probes = [json.loads(line) for line in (REPO / "data_templates" / "smollm2-domain" / "probes-general.jsonl")
              .read_text().splitlines() if line.strip()]
    write = lambda name, rows: (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write("train.jsonl", [{"prompt": g["instruction"]} for g in general[:48]])
    write("heldout.jsonl", [{"prompt": g["instruction"]} for g in general[48:72]])
    write("probes.jsonl", probes[:22])
    (folder / "rewards.py").write_text(REWARDS[kind])
    return {"scored": [g["instruction"] for g in general[200:260]], "probes": probes[22:]}


def score(base_dir: str, run_dir: Path | None, sets: dict, reward) -> tuple[float, list[bool]]:
    from tune.data.probes import contains

    model, tokenizer = scored_model(base_dir, run_dir)
    said = answers(model, tokenizer, sets["scored"] + [p["question"] for p in sets["probes"]])
    scored, probed = said[:len(sets["scored"])], said[len(sets["scored"]):]
    expected = lambda p: p["expected"] if isinstance(p["expected"], list) else [p["expected"]]  # noqa: E731
    return (sum(map(reward, scored)) / len(scored),
            [contains(text, expected(p)) for text, p in zip(probed, sets["probes"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="guard,rollback")
    parser.add_argument("--reward", choices=sorted(REWARDS), default="length")
    parser.add_argument("--set", action="append", default=[], help="more recipe overrides for every run")
    args = parser.parse_args()
    base_dir = base_folder()
    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    sets, reward = inputs(work, args.reward), user_reward(args.reward)
    base_reward, base_right = score(base_dir, None, sets, reward)
    rows = ["| variant | reward (unseen prompts) | gain | general kept | run s | kept |", "|---|---|---|---|---|---|",
            f"| base model | {base_reward:.3f} | | {sum(base_right)}/{len(base_right)} right | | |"]
    print(rows[-1], flush=True)
    for name in args.variants.split(","):
        out = work / f"run-{name}"
        command = [sys.executable, "-m", "tune", "run", str(REPO / "recipes" / "smollm2-grpo.yaml"),
                   "--set", f"data.train={work / 'train.jsonl'}", "--set", f"data.eval={work / 'heldout.jsonl'}",
                   "--set", f"data.probes=[{work / 'probes.jsonl'}]",
                   "--set", f"reward.functions=[{work / 'rewards.py'}:user_reward]", "--set", "reward.weights=null",
                   "--set", f"output.dir={out}", "--set", "output.overwrite=true"]
        for override in VARIANTS[name] + args.set:
            command += ["--set", override]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - started
        (work / f"{name}.log").write_text(result.stdout + result.stderr)
        if result.returncode:
            print(f"{name}: tune run failed:\n{result.stderr[-2000:]}{result.stdout[-1000:]}")
            continue
        tuned, right = score(base_dir, out, sets, reward)
        kept = [t for b, t in zip(base_right, right) if b]
        summary = json.loads((out / "run.json").read_text())
        rows.append(f"| {name} | {tuned:.3f} | {tuned - base_reward:+.3f} | {sum(kept) / max(1, len(kept)):.2f} | "
                    f"{seconds:.0f} | {(summary.get('kept') or '').split(':')[0]} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    print(f"(runs and logs in {work})")


if __name__ == "__main__":
    main()
