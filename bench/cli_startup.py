"""Wall time of the commands users run between edits, each a fresh `python -m tune` process.

    python bench/cli_startup.py             # 7 runs each, prints min / median / max seconds
    python bench/cli_startup.py --runs 15

Goal: under 1 second each. Baseline in the same run: a bare `python -c pass`, and `import torch`
(what these commands would cost if they imported the ML stack)."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "tune --help": [sys.executable, "-m", "tune", "--help"],
    "tune ls": [sys.executable, "-m", "tune", "ls"],
    "tune validate recipes/quickstart.yaml": [sys.executable, "-m", "tune", "validate", "recipes/quickstart.yaml"],
    "import torch (reference)": [sys.executable, "-c", "import torch"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # interleaved, so load on the machine hits every command alike
        for name, command in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(command, cwd=REPO, check=True, capture_output=True)
            times[name].append(time.perf_counter() - started)
    print(f"| command | min s | median s | max s |  ({args.runs} runs each)")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(f"| `{name}` | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
