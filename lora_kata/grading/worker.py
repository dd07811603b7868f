"""The grading process that ``lora-kata grade`` and ``batch`` start: grades one implementation and
journals every check, so the parent can score it even if the submission kills this process.

    python lora_kata/grading/worker.py [--time-limit S --status FILE] IMPLEMENTATION JOURNAL [KATA ...]

With ``--time-limit`` this process only reaps: it grades in a child process of its own (see ``reaper.py``),
stops it after S seconds, kills whatever it left running and writes how it ended to FILE.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script from a copy of the grader: import that copy (two folders up), not this folder's modules
    # as top-level names, nor an installed lora_kata.
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from lora_kata.grading.reaper import run_reaped


def main(arguments: list[str]) -> int:
    """Grade in this process: 0 when every check passed, 1 when one failed, 2 when the grader could not run."""
    if arguments[:1] == ["--time-limit"]:
        time_limit, _, status, *rest = arguments[1:]
        run_reaped(lambda: main(rest), float(time_limit)).write(Path(status))
        return 0
    from lora_kata.grading.implementation import KATAS  # after the fork: the reaping process stays small
    from lora_kata.grading.run import GraderError, run_grader

    implementation, journal, *katas = arguments
    try:
        results = run_grader(implementation, katas or KATAS, journal=Path(journal))
    except GraderError as error:
        print(error, file=sys.stderr)
        return 2
    return int(any(result.outcome == "failed" for result in results))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
