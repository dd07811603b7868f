"""The grading process that ``lora-kata grade`` and ``batch`` start: grades one implementation and
journals every check, so the parent can score it even if the submission kills this process.

    python lora_kata/grading/worker.py IMPLEMENTATION JOURNAL [KATA ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script from a copy of the grader: import that copy (two folders up), not this folder's modules
    # as top-level names, nor an installed lora_kata.
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from lora_kata.grading.implementation import GRADED
from lora_kata.grading.run import GraderError, run_grader


def main(arguments: list[str]) -> int:
    implementation, journal, *katas = arguments
    try:
        check_timeout = os.environ.get("LORA_KATA_CHECK_TIMEOUT")  # set by isolation.py for --check-timeout
        options = [f"--check-timeout={check_timeout}"] if check_timeout else []
        results = run_grader(implementation, katas or GRADED, pytest_args=options, journal=Path(journal))
    except GraderError as error:
        print(error, file=sys.stderr)
        return 2
    return int(any(result.outcome == "failed" for result in results))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
