"""Time the grader against the cost of importing torch, both measured in this run.

    python benchmarks/grader_speed.py [--runs 5]

Prints the median wall time of each command and its ratio to `python -c "import torch"`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
COMMANDS = {
    "import torch (baseline)": [sys.executable, "-c", "import torch"],
    "pytest grader/ --impl solutions": [sys.executable, "-m", "pytest", "grader/", "--impl", "solutions", "-q"],
    "pytest grader/test_lora_linear.py --impl solutions": [
        sys.executable, "-m", "pytest", "grader/test_lora_linear.py", "--impl", "solutions", "-q",
    ],
}  # fmt: skip


def median_seconds(command: list[str], runs: int) -> float:
    """Median wall time of ``runs`` runs, after one warm-up run that fills the OS and bytecode caches."""
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPOSITORY, check=False, capture_output=True)
        if run:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5)")
    runs = parser.parse_args().runs
    medians = {name: median_seconds(command, runs) for name, command in COMMANDS.items()}
    baseline = medians["import torch (baseline)"]
    print(f"{'command':<55} {'median s':>9} {'x import torch':>15}")
    for name, seconds in medians.items():
        print(f"{name:<55} {seconds:>9.2f} {seconds / baseline:>15.2f}")


if __name__ == "__main__":
    main()
