"""Build implementation folders for the grader to grade: the reference answers with some modules swapped."""

from __future__ import annotations

import functools
import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
SOLUTIONS = REPOSITORY / "solutions"
KATAS = REPOSITORY / "katas"


def implementation_folder(destination: Path, sources: dict[str, str] | None = None) -> Path:
    """``destination`` filled with every module of solutions/, except the katas whose source is given."""
    destination.mkdir(parents=True, exist_ok=True)
    for module in SOLUTIONS.glob("*.py"):
        (destination / module.name).write_text(module.read_text())
    for kata, source in (sources or {}).items():
        (destination / f"{kata}.py").write_text(source)
    return destination


def is_stub(kata: str) -> bool:
    """Whether katas/<kata>.py is still the stub as shipped (a learner may have started solving it)."""
    return "raise NotImplementedError" in (KATAS / f"{kata}.py").read_text()


def affected_by(provided: set[str]) -> list[str]:
    """What a grading of ``provided`` (katas whose modules replace the reference's) can change: those katas,
    and every kata whose checks take an object of one of them (a conftest kata fixture) or whose reference
    module imports one, transitively; the capstone takes them all. The rest grades the reference alone."""
    from lora_kata.grading.implementation import GRADED, KATAS

    conftest = (REPOSITORY / "grader" / "conftest.py").read_text()
    fixtures = dict(
        (name, kata) for name, kata in re.findall(r'^(\w+) = kata_fixture\("(\w+)", "\w+"\)', conftest, re.M)
    )
    uses: dict[str, set[str]] = {}
    for kata in GRADED:
        checks = (REPOSITORY / "grader" / f"test_{kata}.py").read_text()
        used = {fixtures[name] for name in set(re.findall(r"\w+", checks)) & fixtures.keys()}
        if kata in KATAS:
            used |= set(re.findall(r"^from (?:\.|katas\.)(\w+) import", (SOLUTIONS / f"{kata}.py").read_text(), re.M))
        uses[kata] = used
    affected = set(provided)
    while grown := {kata for kata, used in uses.items() if used & affected} - affected:
        affected |= grown
    return [kata for kata in GRADED if kata in affected]


@functools.cache
def reference_results() -> tuple:
    """Every check's result on the reference answers, graded once per process (tests that read it share an
    ``xdist_group``, so that one worker grades it for them all)."""
    from lora_kata.grading.run import run_grader

    return tuple(run_grader(SOLUTIONS))
