"""The zoo of wrong answers: each is a reference answer with one realistic mistake written into it.

Every kata has a module here defining ``WRONG_ANSWERS``, and so does the capstone (mistakes in a kata
that its checks catch). A wrong answer names the grader check that must catch it and words its one-line
failure message must contain, so the zoo proves both that the grader fails the mistake and that it
explains it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from tests.implementations import SOLUTIONS


@dataclass(frozen=True)
class WrongAnswer:
    """solutions/<kata>.py with the exact text ``find`` replaced by ``replace``."""

    name: str
    kata: str
    find: str
    replace: str
    caught_by: str  # a grader check, by function name
    explains: str  # words its failure message must contain
    more_edits: tuple[tuple[str, str], ...] = ()  # further (find, replace) pairs, for a mistake in two places
    checks: str = ""  # the row of checks that must catch it (grader/test_<checks>.py), when not the kata's own

    @property
    def graded(self) -> str:
        """The row of the score table whose checks catch it: the kata's, or the capstone's."""
        return self.checks or self.kata

    def source(self) -> str:
        source = (SOLUTIONS / f"{self.kata}.py").read_text()
        for find, replace in [(self.find, self.replace), *self.more_edits]:
            occurrences = source.count(find)
            assert occurrences == 1, (
                f"wrong answer {self.name!r}: {find!r} occurs {occurrences} times in solutions/{self.kata}.py; "
                "update the wrong answer to the current reference"
            )
            source = source.replace(find, replace)
        return source


def all_wrong_answers() -> list[WrongAnswer]:
    """Every kata's wrong answers, in module order."""
    answers: list[WrongAnswer] = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        answers.extend(importlib.import_module(f"{__name__}.{module.name}").WRONG_ANSWERS)
    return answers
