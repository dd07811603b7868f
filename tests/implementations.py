"""Build implementation folders for the grader to grade: the reference answers with some modules swapped."""

from __future__ import annotations

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
