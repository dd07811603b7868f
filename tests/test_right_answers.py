"""The grader passes correct answers whatever their layout: the references and those in right_answers/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from lora_kata.grading.implementation import GRADED
from lora_kata.grading.results import CheckResult
from lora_kata.grading.run import run_grader
from tests.implementations import affected_by, implementation_folder, reference_results

RIGHT_ANSWERS = sorted(path for path in (Path(__file__).parent / "right_answers").iterdir() if path.is_dir())


def assert_all_pass(results: Sequence[CheckResult], katas: Sequence[str]) -> None:
    failures = [f"{result.kata}::{result.check}: {result.message}" for result in results if result.outcome == "failed"]
    assert not failures, f"{len(failures)} checks fail a correct answer: {failures}"
    assert sum(result.outcome == "passed" for result in results) >= 10 * len(katas), "suspiciously few checks ran"


@pytest.mark.xdist_group("reference")  # its grading is shared with test_grading_product on one worker
def test_the_reference_solutions_pass_every_check():
    assert_all_pass(reference_results(), GRADED)


@pytest.mark.parametrize("layout", RIGHT_ANSWERS, ids=lambda path: path.name)
def test_a_correct_answer_in_another_layout_passes_every_check(layout: Path, tmp_path):
    sources = {module.stem: module.read_text() for module in layout.glob("*.py")}
    # The katas its modules can change; the others grade the reference answers, as the test above does.
    katas = affected_by(set(sources))
    assert_all_pass(run_grader(implementation_folder(tmp_path / layout.name, sources), katas), katas)
