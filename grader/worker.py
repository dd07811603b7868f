"""The grading process that ``lora-kata grade`` and ``batch`` start: grades one implementation and
journals every check, so the parent can score it even if the submission kills this process.

    python -m grader.worker IMPLEMENTATION JOURNAL [KATA ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from grader.implementation import GRADED
from grader.run import GraderError, run_grader


def main(arguments: list[str]) -> int:
    implementation, journal, *katas = arguments
    try:
        results = run_grader(implementation, katas or GRADED, journal=Path(journal))
    except GraderError as error:
        print(error, file=sys.stderr)
        return 2
    return int(any(result.outcome == "failed" for result in results))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
