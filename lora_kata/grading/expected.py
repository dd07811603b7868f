"""The checks that every grading on this machine has, and which of them skip here whatever the submission.

A grading that a submission cuts short (``os._exit``, a segfault, the time limit) never reaches some checks.
Counting every one of them as failed would count the cuda cases on a machine without a GPU, or the checks of
an oracle that is not installed, which skip for every other submission: the maximum score would differ. So
the missing checks are filled in from the checks the grader has here, each failed, except those that skip
here anyway. Those are found once per process, by collecting every check and running only its set-up
(``pytest --setup-only``) against an implementation of empty modules, in a process of its own:

    python -m lora_kata.grading.expected JOURNAL
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from lora_kata.grading.implementation import GRADED, KATAS, REPOSITORY
from lora_kata.grading.results import CheckResult, read_journal

NOT_RUN = "not run"  # how read_journal begins the message of a check that never finished
_lock = threading.Lock()
_cache: list[list[CheckResult]] = []


def complete(results: list[CheckResult], katas: Sequence[str], cause: str) -> list[CheckResult]:
    """``results`` with every check of ``katas`` that the grader has: a check missing from them fails with
    ``cause``, and one that never finished but skips on this machine anyway is skipped with its reason."""
    katas = list(katas or GRADED)
    unfinished = any(result.message.startswith(NOT_RUN) for result in results)
    if not unfinished and set(katas) <= {result.kata for result in results}:
        return results  # a grading that ran to its end: nothing to fill in
    expected = [check for check in every_check() if check.kata in katas]
    if not expected:
        return results  # the grader's own checks could not be listed: keep what was measured
    found = {(result.kata, result.check): result for result in results}
    completed = []
    for check in expected:
        result = found.pop((check.kata, check.check), None)
        if result is None:
            result = CheckResult(check.kata, check.check, "failed", f"{NOT_RUN}: {cause}", check.points)
        if result.message.startswith(NOT_RUN) and check.outcome == "skipped":
            result = replace(result, outcome="skipped", message=check.message)
        completed.append(result)
    return completed + list(found.values())


def every_check() -> list[CheckResult]:
    """Every check of the grader, skipped with its reason where it skips on this machine whatever the
    submission, else failed (nothing of a submission ran); [] if they could not be listed."""
    with _lock:
        if not _cache:
            _cache.append(_list_checks())
        return _cache[0]


def _list_checks() -> list[CheckResult]:
    with tempfile.TemporaryDirectory(prefix="lora-kata-checks-") as scratch:
        journal = Path(scratch) / "journal.jsonl"
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
        try:
            subprocess.run(
                [sys.executable, "-m", "lora_kata.grading.expected", str(journal)],
                env=environment, stdin=subprocess.DEVNULL, capture_output=True, timeout=300, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return []
        return [
            check if check.outcome == "skipped" else replace(check, outcome="failed", message="", location="")
            for check in read_journal(journal, "")
        ]


def main(journal: str) -> int:
    from lora_kata.grading.run import GraderError, run_grader  # pytest: only in this process

    with tempfile.TemporaryDirectory(prefix="lora-kata-empty-") as empty:
        for kata in KATAS:
            (Path(empty) / f"{kata}.py").write_text("")
        try:
            run_grader(empty, GRADED, pytest_args=["--setup-only"], journal=Path(journal))
        except GraderError as error:
            print(error, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
