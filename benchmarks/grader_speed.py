"""Time the grader against the cost of importing torch, both measured in this run.

    python benchmarks/grader_speed.py [--runs 5]

Prints the median wall time of each command and its ratio to `python -c "import torch"`. The
`lora-kata check` rows grade a throwaway working copy (LORA_KATA_ROOT) whose katas/ hold the stubs as
committed, every check failing, or the stubs with lora_linear solved by the reference answer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest"]
CHECK = [sys.executable, "-m", "lora_kata", "check", "lora_linear", "--json"]
Command = tuple[list[str], dict[str, str] | None]  # the command line and its environment (None: this one's)


def median_seconds(commands: dict[str, Command], runs: int) -> dict[str, float]:
    """Each command's median wall time over ``runs`` rounds, after a warm-up round that fills the OS and
    bytecode caches. A round runs every command once, so a change in the machine's load reaches them all."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_number in range(runs + 1):
        for name, (command, environment) in commands.items():
            start = time.perf_counter()
            folder = (environment or {}).get("LORA_KATA_ROOT", REPOSITORY)  # lora-kata looks from the cwd first
            subprocess.run(command, cwd=folder, env=environment, check=False, capture_output=True)
            if round_number:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def stub_working_copy(root: Path, solved: tuple[str, ...] = ()) -> dict[str, str]:
    """A working copy at ``root`` with katas/ as committed (the stubs), the ``solved`` katas replaced by
    their reference answers; returns the environment that points `lora-kata` at it."""
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", "HEAD", "katas/"], cwd=REPOSITORY, check=True, capture_output=True, text=True
    )
    (root / "katas").mkdir(parents=True)
    for name in listing.stdout.split():
        show = ["git", "show", f"HEAD:{name}"]
        (root / name).write_bytes(subprocess.run(show, cwd=REPOSITORY, check=True, capture_output=True).stdout)
    for kata in solved:
        shutil.copy(REPOSITORY / "solutions" / f"{kata}.py", root / "katas" / f"{kata}.py")
    return {**os.environ, "LORA_KATA_ROOT": str(root)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5)")
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="grader-speed-") as scratch:
        stubs = stub_working_copy(Path(scratch) / "stubs")
        solved = stub_working_copy(Path(scratch) / "solved", solved=("lora_linear",))
        commands: dict[str, Command] = {
            "import torch (baseline)": ([sys.executable, "-c", "import torch"], None),
            "pytest grader/ --impl solutions": ([*PYTEST, "grader/", "--impl", "solutions", "-q"], None),
            "pytest grader/test_lora_linear.py --impl solutions": (
                [*PYTEST, "grader/test_lora_linear.py", "--impl", "solutions", "-q"], None,
            ),
            "lora-kata check lora_linear (the stub: all fail)": (CHECK, stubs),
            "lora-kata check lora_linear (solved: all pass)": (CHECK, solved),
        }  # fmt: skip
        medians = median_seconds(commands, runs)
    baseline = medians["import torch (baseline)"]
    print(f"{'command':<55} {'median s':>9} {'x import torch':>15}")
    for name, seconds in medians.items():
        print(f"{name:<55} {seconds:>9.2f} {seconds / baseline:>15.2f}")


if __name__ == "__main__":
    main()
