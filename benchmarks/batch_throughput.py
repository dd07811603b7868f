"""Measure `lora-kata batch` throughput on generated submissions, and look for stray processes after it.

    python benchmarks/batch_throughput.py [--submissions 100] [--jobs 2] [--ordinary]

The submissions are the reference answers, a few hostile ones (os._exit, a 50 GB allocation, a leftover
child process, one that detaches itself, a hang under the --timeout) and the wrong answers of tests/wrong_answers,
in turn. The baseline, timed in the same run (before the batch and after it), is `lora-kata grade` of the reference
answers: one submission at a time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from tests.implementations import implementation_folder  # noqa: E402
from tests.wrong_answers import all_wrong_answers  # noqa: E402

HOSTILE = {
    "os-exit": ("apply_lora", "import os\nos._exit(0)\n"),
    "huge-allocation": ("merge_weights", "import torch\nHUGE = torch.ones(50 * 2**30, dtype=torch.uint8)\n"),
    "leftover-child": ("merge_weights", "import subprocess\nsubprocess.Popen(['sleep', '600'])\n"),
    "detached-child": ("fused_lora", "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)\n"),
    "hang": ("merge_weights", "while True:\n    pass\n"),
}


def make_submissions(folder: Path, count: int, hostile: bool = True) -> None:
    """``count`` submission folders: references, hostile ones (unless not ``hostile``) and wrong answers, in turn."""
    kinds = [("reference", {})] + [(name, {kata: source}) for name, (kata, source) in HOSTILE.items() if hostile]
    kinds += [(w.name, {w.kata: w.source()}) for w in all_wrong_answers()]
    for number, (name, sources) in zip(range(count), itertools.cycle(kinds), strict=False):
        implementation_folder(folder / f"{number:03d}-{name.replace(' ', '-').replace('/', '-')}", sources)


def strays(scratch: str) -> list[str]:
    """Command lines of processes the batch grading of ``scratch`` left behind."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if scratch in command or command.startswith("sleep 600"):
            found.append(command)
    return found


def children_cpu_s() -> float:
    """CPU seconds of every finished descendant so far (each waited for by its parent, so counted up the tree)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def baseline() -> tuple[float, float]:
    """Submissions a minute of `lora-kata grade` on the reference answers, one at a time, and its CPU seconds."""
    start, cpu = time.perf_counter(), children_cpu_s()
    subprocess.run([sys.executable, "-m", "lora_kata", "grade", "--impl", "solutions"], cwd=REPOSITORY, check=True,
                   capture_output=True)  # fmt: skip
    return 60 / (time.perf_counter() - start), children_cpu_s() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=60.0, help="per-submission limit (the hang uses it up)")
    parser.add_argument("--ordinary", action="store_true", help="no hostile submissions: references and wrong answers")
    arguments = parser.parse_args()
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")
    one_at_a_time = [baseline()]  # timed before the batch and again after it: the mean of the two
    with tempfile.TemporaryDirectory() as scratch:
        submissions = Path(scratch) / "submissions"
        make_submissions(submissions, arguments.submissions, hostile=not arguments.ordinary)
        command = [sys.executable, "-m", "lora_kata", "batch", str(submissions), "--out", f"{scratch}/grades.csv",
                   "--jobs", str(arguments.jobs), "--timeout", str(arguments.timeout)]  # fmt: skip
        start, cpu = time.perf_counter(), children_cpu_s()
        completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, check=False)
        seconds, cpu = time.perf_counter() - start, children_cpu_s() - cpu
        rows = len(Path(f"{scratch}/grades.csv").read_text().splitlines()) - 1 if completed.returncode == 0 else 0
        left = strays(scratch)
    one_at_a_time.append(baseline())
    per_minute = sum(rate for rate, _ in one_at_a_time) / 2
    grade_cpu = sum(cpu for _, cpu in one_at_a_time) / 2
    rate = 60 * rows / seconds
    how = "a fresh process each" if os.environ.get("LORA_KATA_PRELOAD") == "0" else "forks of the preloaded server"
    print(f"baseline: lora-kata grade --impl solutions, one at a time (before and after): {per_minute:.1f} "
          f"submissions/minute, {grade_cpu:.1f} CPU s each; the batch grades in {how}")  # fmt: skip
    print(f"graded {rows}/{arguments.submissions} submissions with --jobs {arguments.jobs} in {seconds:.1f} s: "
          f"{rate:.1f} submissions/minute ({rate / per_minute:.2f}x the baseline); "
          f"{cpu / max(rows, 1):.1f} CPU s each ({grade_cpu / (cpu / max(rows, 1)):.2f}x less than the baseline's); "
          f"exit code {completed.returncode}; stray processes afterwards: {len(left)}")  # fmt: skip
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{load:.2f}' for load in os.getloadavg())}")
    for command_line in left:
        print(f"  stray: {command_line}")


if __name__ == "__main__":
    main()
