"""The grader fails every wrong answer in the zoo, with the check and the explanation it names."""

from __future__ import annotations

import pytest

from lora_kata.grading.results import CheckResult
from lora_kata.grading.run import run_grader
from tests.implementations import implementation_folder
from tests.wrong_answers import WrongAnswer, all_wrong_answers


def explaining(results: list[CheckResult], wrong: WrongAnswer) -> list[str]:
    """The failure messages of the check that must catch ``wrong`` which say what its mistake is."""
    caught = [result.message for result in results if result.check.partition("[")[0] == wrong.caught_by]
    return [message for message in caught if wrong.explains in message]


@pytest.mark.parametrize("wrong", all_wrong_answers(), ids=lambda wrong: f"{wrong.graded}: {wrong.name}")
def test_the_grader_fails_and_explains_the_mistake(wrong: WrongAnswer, tmp_path):
    folder = implementation_folder(tmp_path / "submission", {wrong.kata: wrong.source()})
    # The check that must catch it: a failed case is enough to deny full marks, so the grading stops at the
    # first; only where that case's verdict names another mistake are all the check's cases graded.
    results = run_grader(folder, [wrong.graded], only=[wrong.caught_by], pytest_args=["--maxfail=1"])
    failures = [result for result in results if result.outcome == "failed"]
    if failures and not explaining(failures, wrong):
        results = run_grader(folder, [wrong.graded], only=[wrong.caught_by])
        failures = [result for result in results if result.outcome == "failed"]
    assert failures, f"the grader passed the wrong answer {wrong.name!r}"
    caught = [result for result in failures if result.check.partition("[")[0] == wrong.caught_by]
    assert caught, f"{wrong.caught_by} passed; the failing checks were {sorted({r.check for r in failures})}"
    assert explaining(caught, wrong), (
        f"{wrong.caught_by} failed without saying {wrong.explains!r}: {[result.message for result in caught]}"
    )
    assert all("\n" not in result.message for result in failures), "a failure message spans several lines"
