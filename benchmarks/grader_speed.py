"""Time the grader against the cost of importing what it grades with, both measured in this run.

    python benchmarks/grader_speed.py [--runs 5]

Prints each command's median wall time and median CPU time (user + system, which a busy machine changes far
less than the clock), and their ratios to two floors: `python -c "import torch"`, and `python -c "import torch,
transformers, peft, bitsandbytes"` (what the whole grader imports). The `lora-kata check` rows grade a
throwaway working copy (LORA_KATA_ROOT) whose katas/ hold the stubs as committed, every check failing, or the
stubs with lora_linear solved by the reference answer.
"""

from __future__ import annotations

import argparse
import os
import resource
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
TORCH, ORACLES = "import torch (floor)", "import torch, transformers, peft, bitsandbytes (floor)"
Command = tuple[list[str], dict[str, str] | None]  # the command line and its environment (None: this one's)


def children_cpu_seconds() -> float:
    """User + system seconds of every finished child process of this one, so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_seconds(commands: dict[str, Command], runs: int) -> dict[str, tuple[float, float]]:
    """Each command's median (wall, CPU) seconds over ``runs`` rounds, after a warm-up round that fills the OS
    and bytecode caches. A round runs every command once, so a change in the machine's load reaches them all."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for round_number in range(runs + 1):
        for name, (command, environment) in commands.items():
            start, cpu = time.perf_counter(), children_cpu_seconds()
            folder = (environment or {}).get("LORA_KATA_ROOT", REPOSITORY)  # lora-kata looks from the cwd first
            subprocess.run(command, cwd=folder, env=environment, check=False, capture_output=True)
            if round_number:
                times[name].append((time.perf_counter() - start, children_cpu_seconds() - cpu))
    return {
        name: (statistics.median(wall for wall, _ in pairs), statistics.median(cpu for _, cpu in pairs))
        for name, pairs in times.items()
    }


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
            TORCH: ([sys.executable, "-c", "import torch"], None),
            ORACLES: ([sys.executable, "-c", "import torch, transformers, peft, bitsandbytes"], None),
            "pytest grader/ --impl solutions": ([*PYTEST, "grader/", "--impl", "solutions", "-q"], None),
            "pytest grader/test_lora_linear.py --impl solutions": (
                [*PYTEST, "grader/test_lora_linear.py", "--impl", "solutions", "-q"], None,
            ),
            "lora-kata check lora_linear (the stub: all fail)": (CHECK, stubs),
            "lora-kata check lora_linear (solved: all pass)": (CHECK, solved),
        }  # fmt: skip
        medians = median_seconds(commands, runs)
    (torch_wall, torch_cpu), (oracles_wall, oracles_cpu) = medians[TORCH], medians[ORACLES]
    print(f"{'command':<55} {'wall s':>7} {'CPU s':>7} {'x torch (wall, CPU)':>20} {'x all imports (wall, CPU)':>26}")
    for name, (wall, cpu) in medians.items():
        torch_ratios = f"{wall / torch_wall:.2f}, {cpu / torch_cpu:.2f}"
        oracle_ratios = f"{wall / oracles_wall:.2f}, {cpu / oracles_cpu:.2f}"
        print(f"{name:<55} {wall:>7.2f} {cpu:>7.2f} {torch_ratios:>20} {oracle_ratios:>26}")


if __name__ == "__main__":
    main()
