"""Check results: collected from pytest's reports, totalled per kata, written as a score table or JSON."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora_kata.grading.implementation import GRADED

if TYPE_CHECKING:  # pytest only calls the Collector's hooks; `lora-kata` itself starts faster without it
    import pytest


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome; ``message`` is its one-line verdict or skip reason ('' when passed)."""

    kata: str
    check: str
    outcome: str  # "passed", "failed" or "skipped"
    message: str
    points: float
    location: str = ""  # "path:line" in the implementation to look at, for failures

    @property
    def score(self) -> float:
        return self.points if self.outcome == "passed" else 0.0


class Collector:
    """A pytest plugin that keeps one ``CheckResult`` per check, in run order.

    With a ``journal`` path it also appends every check as collected, then every result, as JSON
    lines, so a parent process knows what was graded even when this process dies half-way.
    """

    def __init__(self, journal: Path | None = None) -> None:
        self.by_nodeid: dict[str, CheckResult] = {}
        self.journal = journal

    def _record(self, kind: str, result: CheckResult) -> None:
        if self.journal is not None:
            with self.journal.open("a") as journal:
                journal.write(json.dumps({"kind": kind, **asdict(result)}) + "\n")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            properties = dict(item.user_properties)
            check = item.nodeid.partition("::")[2]
            self._record("collected", CheckResult(properties["kata"], check, "failed", "", float(properties["points"])))

    @property
    def results(self) -> list[CheckResult]:
        return list(self.by_nodeid.values())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.passed:
            return
        if report.nodeid in self.by_nodeid and self.by_nodeid[report.nodeid].outcome != "passed":
            return  # keep a check's first problem: a teardown error after a failure adds nothing
        check = report.nodeid.partition("::")[2]
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = report.longrepr[2].removeprefix("Skipped: ")
        elif report.failed:
            message = str(report.longrepr)
        outcome = "failed" if report.failed else report.outcome
        properties = dict(report.user_properties)
        points, kata = float(properties["points"]), properties["kata"]
        location = getattr(report.longrepr, "location", "") if report.failed else ""
        self.by_nodeid[report.nodeid] = CheckResult(kata, check, outcome, message, points, location)
        self._record("result", self.by_nodeid[report.nodeid])


def kata_totals(results: list[CheckResult]) -> dict[str, dict[str, float]]:
    """kata -> passed, checks, score and max_score, skipped checks left out, katas in the grader's order."""
    totals: dict[str, dict[str, float]] = {}
    for kata in sorted({result.kata for result in results}, key=_kata_order):
        graded = [result for result in results if result.kata == kata and result.outcome != "skipped"]
        totals[kata] = {
            "passed": sum(result.outcome == "passed" for result in graded),
            "checks": len(graded),
            "score": sum(result.score for result in graded),
            "max_score": sum(result.points for result in graded),
        }
    return totals


def _kata_order(kata: str) -> tuple[int, str]:
    return (GRADED.index(kata) if kata in GRADED else len(GRADED), kata)


def score_table(results: list[CheckResult]) -> list[str]:
    """The score table's lines: one per kata, the total, and what was skipped."""
    totals = kata_totals(results)
    rows = [(kata, total) for kata, total in totals.items()]
    rows.append(
        (
            "total",
            {key: sum(total[key] for total in totals.values()) for key in ("passed", "checks", "score", "max_score")},
        )
    )
    lines = [f"{'kata':<16}{'checks':>10}{'points':>14}"]
    for kata, total in rows:
        blocked = next((r.message for r in results if r.kata == kata and r.message.startswith("blocked")), "")
        checks = f"{total['passed']:.0f}/{total['checks']:.0f}"
        points = f"{total['score']:g}/{total['max_score']:g}"
        lines.append(f"{kata:<16}{checks:>10}{points:>14}" + (f"   {blocked.split(' (')[0]}" if blocked else ""))
    reasons = Counter(result.message for result in results if result.outcome == "skipped")
    lines += [f"({count} {'check' if count == 1 else 'checks'} skipped: {reason})" for reason, count in reasons.items()]
    return lines


def gradescope(results: list[CheckResult], execution_time: float, notes: tuple[str, ...] = ()) -> dict:
    """Results in the shape of Gradescope's results.json (skipped checks are left out of ``tests``)."""
    graded = [result for result in results if result.outcome != "skipped"]
    return {
        "score": sum(result.score for result in graded),
        "max_score": sum(result.points for result in graded),
        "execution_time": round(execution_time, 2),
        "output": "\n".join([*notes, *score_table(results)]),
        "tests": [
            {
                "name": f"{result.kata}: {result.check}",
                "number": str(number),
                "score": result.score,
                "max_score": result.points,
                "status": result.outcome,
                "output": result.message,
                "tags": [result.kata],
                "visibility": "visible",
            }
            for number, result in enumerate(graded, start=1)
        ],
        "lora_kata": {"results": [asdict(result) for result in results], "notes": list(notes)},
    }


def write_json(path: Path, document: dict) -> None:
    """Write ``document`` to ``path`` atomically (a reader never sees half a file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)


def read_results(document: dict) -> list[CheckResult]:
    """The check results stored in a document written by ``gradescope``."""
    return [CheckResult(**fields) for fields in document["lora_kata"]["results"]]


def read_journal(journal: Path, cause: str) -> list[CheckResult]:
    """Every collected check with its recorded result; checks with none failed with ``cause``."""
    checks: dict[tuple[str, str], CheckResult] = {}
    lines = journal.read_text().splitlines() if journal.exists() else []
    for line in lines:
        try:
            record = json.loads(line)
            kind = record.pop("kind")
            result = CheckResult(**record)
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by a crash
        key = (result.kata, result.check)
        if kind == "collected":
            checks.setdefault(key, CheckResult(result.kata, result.check, "failed", f"not run: {cause}", result.points))
        elif key not in checks or checks[key].message.startswith("not run") or checks[key].outcome == "passed":
            checks[key] = result
    return list(checks.values())
