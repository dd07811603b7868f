"""How a graded run reads: one line per failed check (expected, measured, likely cause) and a score table.

``Reporter`` is a pytest plugin: it replaces a failed check's traceback with a ``Verdict`` and points it
at the place in the implementation to look at; ``--tb=long`` (or any other ``--tb``) keeps pytest's own.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lora_kata.grading.implementation import KATAS, Implementation, ImportTimedOut, KataUnavailable
from lora_kata.grading.results import Collector, score_table
from lora_kata.grading.time_limit import time_limit_of, waited

if sys.version_info < (3, 11):  # pytest's dependency there
    from exceptiongroup import BaseExceptionGroup


@dataclass
class _Crash:
    message: str


class Verdict:
    """A failure report of one line; ``location`` is the place in the implementation to look at ("path:line")."""

    def __init__(self, text: str, location: str) -> None:
        self.text = text
        self.location = location
        self.reprcrash = _Crash(text)

    def toterminal(self, writer: Any) -> None:
        writer.line(self.text, red=True, bold=True)

    def __str__(self) -> str:
        return self.text


def kata_of(item: pytest.Item) -> str:
    """The kata a check grades: ``test_<kata>.py`` holds the checks of ``<kata>``."""
    return Path(item.path).stem.removeprefix("test_")


class Reporter:
    """Turns failed checks into one-line verdicts and ends the run with the score table."""

    def __init__(self, implementation: Implementation) -> None:
        self.implementation = implementation

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport | None:
        """The report of a failed phase, with its verdict as the longrepr; None leaves the report to pytest.

        pytest's own report would first render the whole traceback, reading and parsing the check's file
        for every frame (most of the time a run of failing stubs takes), only for the verdict to replace it.
        So pytest builds the report of the same phase as if it had raised nothing, which fills in every
        other field (captured output, duration, user properties), and the outcome and longrepr are set
        here. pytest's hook wrappers (xfail, hypothesis, the tamper guard) still see the report after.
        """
        excinfo = call.excinfo
        if excinfo is None:
            return None
        if _reported_as_skip(excinfo.value):
            if not self._skipped_by_the_implementation(excinfo.value):
                return None  # the grader's own skip: no GPU here, transformers not installed
        elif not _writes_verdicts(item.config):
            return None
        call.excinfo = None
        try:
            report = pytest.TestReport.from_item_and_call(item, call)
        finally:
            call.excinfo = excinfo
        error = excinfo.value
        report.outcome = "failed"
        report.longrepr = Verdict(self.verdict(item, error), self.blame(item, error))
        return report

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
        collector = next(plugin for plugin in config.pluginmanager.get_plugins() if isinstance(plugin, Collector))
        if collector.results:
            terminalreporter.write_sep("=", "lora-kata score")
            for line in score_table(collector.results):
                terminalreporter.write_line(line)

    def _frame(self, item: pytest.Item, error: BaseException) -> tuple[Path, int] | None:
        """The implementation's frame to show: the deepest one in the check's own kata, else the deepest one.

        When apply_lora passes LoRALinear bad arguments, the error is raised in lora_linear.py but the
        mistake is the call in apply_lora.py.
        """
        return self.implementation.innermost_frame(error, kata_of(item)) or self.implementation.innermost_frame(error)

    def _raised_by_the_implementation(self, error: BaseException) -> bool:
        """Whether the implementation's own code raised ``error`` (a stub's ``raise NotImplementedError``),
        rather than a library it called (torch raises NotImplementedError for what it does not support)."""
        frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
        return bool(frames) and Path(frames[-1].f_code.co_filename).is_relative_to(self.implementation.folder)

    def _skipped_by_the_implementation(self, error: BaseException) -> bool:
        """Whether the implementation's code raised the skip (or one of a group of them): a submission may
        not skip the checks it would fail, since skipped checks count neither way."""
        if isinstance(error, BaseExceptionGroup):
            return any(self._skipped_by_the_implementation(inner) for inner in error.exceptions)
        return self.implementation.innermost_frame(error) is not None

    def blame(self, item: pytest.Item, error: BaseException) -> str:
        """Where in the implementation to look: the frame of its code in the traceback, else the definition
        the check is about (the ``subject`` marker, else its module's SUBJECT; ``KATA:NAME`` names another kata's,
        as the capstone's checks do), else the top of the kata's file."""
        kata = kata_of(item)
        if isinstance(error, ImportTimedOut):
            return error.location
        where = self._frame(item, error)
        if where is None:
            path, line = self.implementation.folder / f"{kata}.py", 1
            marker = item.get_closest_marker("subject")
            subject = marker.args[0] if marker else getattr(item.module, "SUBJECT", "")
            owner, _, subject = subject.rpartition(":")
            with contextlib.suppress(KataUnavailable, OSError, TypeError):
                definition = self.implementation.attribute(owner or kata, subject)
                path, line = Path(inspect.getsourcefile(definition)), inspect.getsourcelines(definition)[1]
            where = (path, line)
        return f"{self.implementation.relative(where[0])}:{where[1]}"

    def verdict(self, item: pytest.Item, error: BaseException) -> str:
        """One line explaining why ``item`` failed with ``error``."""
        kata = kata_of(item)
        first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
        if isinstance(error, (KataUnavailable, ImportTimedOut)):
            return str(error)
        deepest = self.implementation.innermost_frame(error)
        if isinstance(error, NotImplementedError) and self._raised_by_the_implementation(error):
            culprit = deepest[0].stem if deepest else kata
            if culprit != kata and culprit in KATAS:
                return f"blocked: finish {culprit} first ({first_line})"
            return f"not implemented yet: {first_line}"
        if deepest is None:  # a check of the grader failed: its message is the verdict
            message = str(error).split("\nassert ")[0].strip() or first_line
            return " ".join([message, *_hypothesis_notes(error)])
        location = f"{self.implementation.relative(deepest[0])}:{deepest[1]}"
        caller = self._frame(item, error)
        if caller != deepest and caller is not None:
            location += f" (called from {self.implementation.relative(caller[0])}:{caller[1]})"
        if limit := time_limit_of(error):
            if waited(limit):
                return f"timed out after {limit}, stuck at {location}: a sleep, a lock or a read that never returns?"
            return f"timed out after {limit}, stuck at {location}: an endless loop, or far slower than it should be?"
        if _reported_as_skip(error):
            return f"the submission skipped the check ({type(error).__name__} at {location}): that counts as failed"
        return f"{type(error).__name__} raised at {location}: {first_line}"


def _writes_verdicts(config: pytest.Config) -> bool:
    """Whether failures read as verdicts: yes unless a ``--tb`` style was asked for."""
    return getattr(config.option, "tbstyle", "auto") == "auto"


def _reported_as_skip(error: BaseException) -> bool:
    """Whether pytest reports a phase that raised ``error`` as skipped: ``pytest.skip``, an exception group
    of nothing else, or ``unittest.SkipTest`` (which pytest's unittest plugin turns into a skip)."""
    unittest = sys.modules.get("unittest")
    return (unittest is not None and isinstance(error, unittest.SkipTest)) or _only_skips(error)


def _only_skips(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_only_skips(inner) for inner in error.exceptions)
    return isinstance(error, pytest.skip.Exception)


def _hypothesis_notes(error: BaseException) -> list[str]:
    """Hypothesis's 'Falsifying example' note, folded onto one line."""
    notes = getattr(error, "__notes__", [])
    return [" ".join(note.split()) for note in notes if note.startswith("Falsifying")]
