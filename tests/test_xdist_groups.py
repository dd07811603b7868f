"""`make test` runs the suite with `-n 2 --dist loadgroup`: tests marked with one `xdist_group` run on one worker,
so that what they share (the reference's grading, `reference_results`) is computed once."""

from __future__ import annotations

import pytest

GROUPED = """
import os
from pathlib import Path

import pytest


@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("n", range(4))
def test_grouped(n):
    Path(f"worker-{n}.txt").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


def test_tests_of_one_group_run_on_one_worker(pytester: pytest.Pytester):
    pytester.makepyfile(test_grouped=GROUPED)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    workers = {(pytester.path / f"worker-{n}.txt").read_text() for n in range(4)}
    assert len(workers) == 1, f"one xdist_group ran on workers {sorted(workers)}: is pytest newer than xdist supports?"
