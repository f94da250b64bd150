"""What the multi-process tests (test_ddp.py, test_fsdp.py) share: the quickstart recipe on the session's tiny
model, the command that runs tune in a subprocess, and the way a run's processes are found to kill them."""

import json
import sys
from pathlib import Path

from tests.conftest import REPO

QUICKSTART = REPO / "recipes" / "quickstart.yaml"
# The quickstart recipe on the session's tiny model. Its 147 training rows hold 18 full global batches of
# 8; 16 steps stay inside them (at an epoch's ragged end, DDP tops up the last batch with repeated rows,
# so that step could not match a single process). Checkpoints at 8 and 16 give the resume test a midpoint.
SETS = ["model.name=tiny-llama", "train.max_steps=16", "train.save_steps=8", "train.logging_steps=1"]


def tune_cmd(*args):
    return [sys.executable, "-m", "tune", *map(str, args)]


def sets(*extra):
    return [arg for item in (*SETS, *extra) for arg in ("--set", item)]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def children_of(pid: int) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def kill_all_after_first_checkpoint(command: list[str], out: Path) -> Path:
    """Start `command`, and once its step-8 checkpoint is complete SIGKILL the launcher and every worker at
    once, as a lost node does (none cleans up). Returns that checkpoint's manifest."""
    import os
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "checkpoint-8" / "manifest.json"
    deadline = time.time() + 240
    workers: list[int] = []
    while not first.exists() and process.poll() is None and time.time() < deadline:
        workers = children_of(process.pid) or workers
        time.sleep(0.002)
    for pid in [process.pid] + workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    return first
