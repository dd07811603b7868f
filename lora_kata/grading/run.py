"""Run the grader in this process and collect every check's outcome (for tests and the CLI)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from lora_kata.grading.implementation import CHECKS, GRADED
from lora_kata.grading.results import CheckResult, Collector


class _NoFinalCollection:
    """pytest's unraisable-exception plugin ends each run with a full ``gc.collect()``, which walks every object
    torch and the oracles hold (0.3 s and more a run): a run in a process that grades again (the tests, the
    preloaded server) skips it, as pytester's in-process runs do. Unraisable exceptions are still caught."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        with contextlib.suppress(ImportError):  # where a pytest release has no such setting, nothing to skip
            from _pytest.unraisableexception import gc_collect_iterations_key

            config.stash[gc_collect_iterations_key] = 0


class GraderError(Exception):
    """The grader could not run at all (a bad --impl, say); the message says why."""


def run_grader(
    implementation: str | Path,
    katas: Iterable[str] = GRADED,
    pytest_args: Sequence[str] = (),
    journal: Path | None = None,
    only: Sequence[str] = (),
) -> list[CheckResult]:
    """Grade the kata modules in ``implementation`` and return one result per check, in run order.

    With a ``journal`` path every check is also appended there as it is collected and graded (see
    ``Collector``). ``only`` names the check functions to run (every case of each), in each kata's module;
    default all. pytest's terminal output is swallowed; the results carry each check's verdict.
    """
    collector = Collector(journal)
    paths = [str(CHECKS / f"test_{kata}.py") + f"::{check}" * bool(check) for kata in katas for check in only or [""]]
    # "--impl=PATH" in one word: pytest would read a separate PATH as a test path and pick its rootdir (and
    # so the test ids, and any pytest.ini a submission ships) from there.
    arguments = [*paths, f"--impl={implementation}", "--rootdir", str(CHECKS.parent), "-o", "addopts="]
    # No log capture: it attaches a handler to each of the ~90 non-propagating loggers torch and transformers
    # make, around every phase of every check (0.4 CPU seconds per 1000 checks); the verdicts never show logs.
    arguments += ["-p", "no:cacheprovider", "-p", "no:logging", *pytest_args]
    # The terminal plugin stays loaded (pytest-timeout reports a timeout through it); its output goes nowhere.
    with contextlib.redirect_stdout(io.StringIO()):
        exit_code = pytest.main(arguments, plugins=[collector, _NoFinalCollection()])
    if exit_code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        raise GraderError(f"the grader stopped with pytest exit code {exit_code} ({pytest.ExitCode(exit_code).name})")
    return collector.results
