"""The grader fails every wrong answer in the zoo, with the check and the explanation it names."""

from __future__ import annotations

import pytest

from lora_kata.grading.run import run_grader
from tests.implementations import implementation_folder
from tests.wrong_answers import WrongAnswer, all_wrong_answers


@pytest.mark.parametrize("wrong", all_wrong_answers(), ids=lambda wrong: f"{wrong.graded}: {wrong.name}")
def test_the_grader_fails_and_explains_the_mistake(wrong: WrongAnswer, tmp_path):
    folder = implementation_folder(tmp_path / "submission", {wrong.kata: wrong.source()})
    # The check that must catch it, every case of it: a failed check is enough to deny full marks.
    results = run_grader(folder, [wrong.graded], only=[wrong.caught_by])
    failures = [result for result in results if result.outcome == "failed"]
    assert failures, f"the grader passed the wrong answer {wrong.name!r}"
    caught = [result.message for result in failures if result.check.partition("[")[0] == wrong.caught_by]
    assert caught, f"{wrong.caught_by} passed; the failing checks were {sorted({r.check for r in failures})}"
    assert any(wrong.explains in message for message in caught), (
        f"{wrong.caught_by} failed without saying {wrong.explains!r}: {caught}"
    )
    assert all("\n" not in result.message for result in failures), "a failure message spans several lines"
