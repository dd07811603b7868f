"""The pytest plugin that applies the guards of ``lora_kata/grading/tamper.py`` around every check."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_kata.grading.report import Verdict
from lora_kata.grading.tamper import ObjectGuard, ReferenceBlocker, changed_files, fingerprint


class TamperWatch:
    """A pytest plugin that applies the guards above around every check of a grading session.

    A check during which the submission replaced a guarded object or imported the reference answers
    fails with a ``tampering:`` verdict; edits to the grader's files fail the whole run.
    """

    def __init__(self, *grader: Path) -> None:
        self.grader = grader  # the folders of the checks and of the engine
        self.grader_files = fingerprint(*grader)
        self.notes: list[str] = []
        self.guard: ObjectGuard | None = None
        self.blocker = ReferenceBlocker()
        sys.meta_path.insert(0, self.blocker)
        for name in [name for name in sys.modules if name.split(".")[0] == "solutions"]:
            del sys.modules[name]  # a cached module would bypass the blocker

    def pytest_unconfigure(self) -> None:
        if self.blocker in sys.meta_path:
            sys.meta_path.remove(self.blocker)

    def pytest_collection_finish(self) -> None:
        """Record what the checks compare with now, before any submission code has run."""
        self.guard = ObjectGuard()

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: sees the report after its verdict is written
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
        report = yield
        if call.when == "call":
            tampering = self.tampering()
            if tampering:
                self.notes.append(f"{item.name}: {tampering}")
                report.outcome = "failed"
                location = getattr(report.longrepr, "location", "")
                report.longrepr = Verdict(f"tampering: {tampering}; this check does not count", location)
        return report

    def tampering(self) -> str:
        """What the submission tampered with during the last check ('' if nothing); replaced objects are restored."""
        replaced = self.guard.replaced() if self.guard else []
        if replaced:
            self.guard.restore()
            return f"the submission replaced {', '.join(replaced[:4])}, which the grader relies on; restored"
        if self.blocker.attempts:
            attempts, self.blocker.attempts[:] = sorted(set(self.blocker.attempts)), []
            return f"the submission tried to import {', '.join(attempts)}, the reference answers"
        return ""

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        changed = changed_files(self.grader_files, *self.grader)
        if changed:
            self.notes.append(f"the grader's files changed during grading: {[path.name for path in changed]}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for note in self.notes:
            terminalreporter.write_line(f"tampering: {note}", red=True, bold=True)
