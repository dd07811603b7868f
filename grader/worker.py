"""The grading process that ``lora-kata grade`` and ``batch`` start: grades one implementation and
journals every check, so the parent can score it even if the submission kills this process.

    python -m grader.worker IMPLEMENTATION JOURNAL [KATA ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from grader.implementation import KATAS
from grader.results import Collector
from grader.run import GRADER


def main(arguments: list[str]) -> int:
    implementation, journal, *katas = arguments
    paths = [str(GRADER / f"test_{kata}.py") for kata in katas or KATAS]
    options = ["--impl", implementation, "-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:terminal"]
    return pytest.main([*paths, *options], plugins=[Collector(Path(journal))])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
