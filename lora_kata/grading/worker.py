"""The grading process that ``lora-kata grade`` and ``batch`` start: grades one implementation and
journals every check, so the parent can score it even if the submission kills this process.

    python lora_kata/grading/worker.py [--time-limit S --status FILE] IMPLEMENTATION JOURNAL [KATA ...]

With ``--time-limit`` this process only reaps: it grades in a child process of its own (see ``reaper.py``),
stops it after S seconds, kills whatever it left running and writes how it ended to FILE.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script from a copy of the grader: import that copy (two folders up), not this folder's modules
    # as top-level names, nor an installed lora_kata.
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from lora_kata.grading.reaper import run_reaped

CHECK_TIMEOUT_VARIABLE = "LORA_KATA_CHECK_TIMEOUT"  # how the grading's --check-timeout reaches this process


def check_timeout_environment(check_timeout_s: float | None) -> dict[str, str]:
    """What to add to this process's environment for the checks' --check-timeout (None: the grader's default)."""
    return {CHECK_TIMEOUT_VARIABLE: f"{check_timeout_s:g}"} if check_timeout_s is not None else {}


def main(arguments: list[str]) -> int:
    """Grade in this process: 0 when every check passed, 1 when one failed, 2 when the grader could not run."""
    if arguments[:1] == ["--time-limit"]:
        time_limit, _, status, *rest = arguments[1:]
        run_reaped(lambda: main(rest), float(time_limit)).write(Path(status))
        return 0
    from lora_kata.grading.implementation import GRADED  # after the fork: the reaping process stays small
    from lora_kata.grading.run import GraderError, run_grader

    implementation, journal, *katas = arguments
    try:
        check_timeout = os.environ.get(CHECK_TIMEOUT_VARIABLE)
        options = [f"--check-timeout={check_timeout}"] if check_timeout else []
        results = run_grader(implementation, katas or GRADED, pytest_args=options, journal=Path(journal))
    except GraderError as error:
        print(error, file=sys.stderr)
        return 2
    return int(any(result.outcome == "failed" for result in results))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
