"""`tune run RECIPE --nproc N`: check everything that can be checked here, then start N copies of
`python -m tune run RECIPE ...` through torchrun (torch.distributed.run), the launcher that
`accelerate launch` also uses. Options after `--` go to torchrun as they are (--nnodes, --node-rank,
--rdzv-endpoint, ...): several nodes are torchrun's business, not tune's.

torchrun runs inside this process rather than as a child: when a worker fails, torchrun's own report is a
Python traceback of the launcher; here it becomes the failing worker's error, printed once. Workers that
do not print their error (record_failure) leave it in torchelastic's error file for that report.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tune.errors import TuneError


def from_cli(recipe_path: Path, sets: list[str], resume: bool, nproc: int | None, launcher_args: list[str],
             echo, err, allow_data_change: bool = False) -> int | None:
    """`tune run --nproc N [-- torchrun options]`: the run's exit code, or None to train in this process."""
    import os

    from tune import recipe as recipe_io
    from tune.quiet import quiet_libraries

    if nproc is None:
        raise TuneError(f"unexpected arguments {' '.join(launcher_args)}; torchrun options after -- need --nproc N")
    if "WORLD_SIZE" in os.environ:
        raise TuneError(f"--nproc: this process was started by a launcher (WORLD_SIZE={os.environ['WORLD_SIZE']}); "
                        "drop --nproc")
    if nproc == 1 and not launcher_args:
        return None
    quiet_libraries()
    from tune.output import exclusive

    recipe = recipe_io.load(recipe_path, sets)
    if parse(nproc, [], launcher_args).node_rank == 0:
        with exclusive(Path(recipe.output.dir)):  # never plans (and tidies) a dir another run is writing
            check_before_launch(recipe, recipe_path, nproc, resume, not launcher_args, echo)
    else:  # only global rank 0 (on the first node) writes: the output dir, maybe shared and in use, is its own
        check_before_launch(recipe, recipe_path, nproc, resume, False, echo, plan=False)
    child = ["run", str(recipe_path)] + [arg for item in sets for arg in ("--set", item)] + (["--resume"] if resume else [])
    child += ["--allow-data-change"] if allow_data_change else []
    return launch(nproc, child, launcher_args, err)


def check_before_launch(recipe, recipe_path: Path, nproc: int, resume: bool, single_node: bool, echo,
                        plan: bool = True) -> None:
    """A bad recipe, missing data, a missing package, too few GPUs or an output dir the run may not use:
    refused before any process starts (each would otherwise pay for imports and model loading first).
    `plan`: also check the output dir (the first node; a later node's launcher leaves it to that one)."""
    import torch

    from tune.train import distributed
    from tune.train.checkpoints import plan_output_dir
    from tune.train.checks import findings

    recipe_dir = Path(recipe_path).resolve().parent
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = distributed.requirements(recipe, gpus, nproc)  # the package first: its line says what to install
    problems = problems or findings(recipe, recipe_dir)[0]  # rank 0 prints the warnings, once
    if problems:
        raise TuneError(problems)
    if not plan:
        return
    # Rank 0 plans the dir again and finds the same; incomplete checkpoints are reported (and removed) here.
    resume_from = plan_output_dir(recipe, recipe_path, resume, echo)
    if single_node:
        distributed.check_resume(resume_from, nproc)


def launch(nproc: int, child_args: list[str], launcher_args: list[str], err=None) -> int:
    """Run `python -m tune *child_args` in nproc processes; the exit code of the run."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    args = parse(nproc, child_args, launcher_args)
    # The launcher's own log lines (OMP_NUM_THREADS banner, per-worker failure lines) repeat what the
    # workers say; rank 0 prints the run, and a failure is reported once below.
    for name in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as exc:
        return report(exc.failures, err)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


def parse(nproc: int, child_args: list[str], launcher_args: list[str]):
    """torchrun's own reading of its options (the node rank among them); a bad one is one line."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()

    def refuse(message: str):
        raise TuneError(f"torchrun options after --: {message}")

    parser.error = refuse  # argparse would print its usage and exit; keep errors one line
    return parser.parse_args(["--nproc-per-node", str(nproc), *launcher_args, "-m", "tune", *child_args])


def report(failures: dict, err=None) -> int:
    """Rank 0 prints its own error, so only another rank's failure needs saying: the first one that is a
    cause (a collective broken by a dead peer is a consequence, and says so in its error file)."""
    def recorded(failure) -> dict:
        data = failure.error_file_data.get("message")
        return data if isinstance(data, dict) else {}

    def consequence(failure) -> bool:
        return bool(recorded(failure).get("extraInfo", {}).get("peer_failure"))

    zero = failures.get(0)
    if zero is not None and zero.exitcode > 0 and not consequence(zero):
        return zero.exitcode
    causes = {rank: f for rank, f in failures.items() if not consequence(f)} or failures
    rank = min(causes, key=lambda index: (causes[index].timestamp, index == 0))
    failure, data = causes[rank], recorded(causes[rank])
    if data:
        text = data.get("extraInfo", {}).get("py_callstack") or data.get("message", "")
    else:
        signal = f"signal {-failure.exitcode}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        text = f"process {rank} ended with {signal} and left no error message"
    if err is not None:
        for line in text.rstrip().splitlines():
            err.print(line, markup=False)
    return failure.exitcode if failure.exitcode > 0 else 1


def peer_failed(exc: BaseException) -> bool:
    """A collective broken because another process died: a consequence, not the cause, of a failure."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or "closed by peer" in text or "reset by peer" in text


def record_failure(message: str, callstack: str = "", peer: bool = False) -> None:
    """A process that does not print its error (any rank but 0; rank 0 when a peer's death broke a
    collective) writes it to torchelastic's error file (the format its ErrorHandler writes), from which
    the launcher reports the cause once."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        from tune.output import write_json

        extra = {"timestamp": str(int(time.time()))} | ({"py_callstack": callstack} if callstack else {})
        extra |= {"peer_failure": "1"} if peer else {}
        write_json(Path(path), {"message": {"message": message, "extraInfo": extra}})  # torchrun shows the callstack, else the message

