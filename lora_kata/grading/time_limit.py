"""A check's time limit counted in CPU seconds, so that a loaded machine does not change a grade.

pytest-timeout counts wall-clock seconds: on a machine busy with other work a check that needs 5 s of
computing can take 30, and the same submission would fail as stuck there and pass elsewhere. This plugin
takes over pytest-timeout's timer (its ``pytest_timeout_set_timer`` hook): a check fails as stuck once its
process has spent the limit in CPU time (``ITIMER_PROF``), and, for a check that waits rather than computes
(a sleep, a lock, a read that never returns), once ``WALL_FACTOR`` times the limit has passed on the clock.
Where signals cannot be used (not the main thread, no ``setitimer``), pytest-timeout's own timer runs.
"""

from __future__ import annotations

import re
import signal
import threading
from typing import Any

from pluggy import HookimplMarker

hookimpl = HookimplMarker("pytest")  # pytest.hookimpl, without importing pytest where only the parser is used

WALL_FACTOR = 10  # a check waiting this many times its CPU limit is stuck, however loaded the machine is
_CPU, _WALL = "of CPU time", "of waiting (wall clock)"
_FAILURE = re.compile(rf"Timeout \(>(\d+(?:\.\d+)?) s ({re.escape(_CPU)}|{re.escape(_WALL)})\)")
_PYTEST_TIMEOUT_FAILURE = re.compile(r"Timeout \(>(\d+(?:\.\d+)?)s from pytest-timeout\)")  # its own timer


def time_limit_of(error: BaseException) -> str | None:
    """The limit a check ran past (e.g. '20 s of CPU time') when ``error`` is a timeout's failure, else None."""
    if type(error).__name__ != "Failed":  # pytest.fail's exception
        return None
    if found := _FAILURE.match(str(error)):
        return f"{found.group(1)} s {found.group(2)}"
    if found := _PYTEST_TIMEOUT_FAILURE.match(str(error)):
        return f"{float(found.group(1)):g} s {_WALL}"
    return None


def waited(limit: str) -> bool:
    """Whether ``limit`` (from ``time_limit_of``) is the wall-clock one: the check was waiting, not computing."""
    return limit.endswith(_WALL)


class CpuTimeLimit:
    """pytest plugin: each check's limit, in CPU seconds with a wall-clock backstop (see the module)."""

    def pytest_report_header(self, config: Any) -> str | None:
        limit = getattr(config.option, "timeout", None)
        if not limit or not hasattr(signal, "setitimer"):
            return None
        return f"check time limit: {limit:g} s of CPU time, {WALL_FACTOR * limit:g} s of waiting"

    @hookimpl(tryfirst=True)
    def pytest_timeout_set_timer(self, item: Any, settings: Any) -> bool | None:
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            return None  # pytest-timeout's own timer
        limit = float(settings.timeout)

        def ran_out(kind: str, seconds: float) -> Any:
            def handler(signum: int, frame: object) -> None:
                import pytest

                __tracebackhide__ = True
                cancel()
                pytest.fail(f"Timeout (>{seconds:g} s {kind})", pytrace=False)

            return handler

        def cancel() -> None:
            for timer, number in ((signal.ITIMER_PROF, signal.SIGPROF), (signal.ITIMER_REAL, signal.SIGALRM)):
                signal.setitimer(timer, 0)
                signal.signal(number, signal.SIG_DFL)

        item.cancel_timeout = cancel  # what pytest-timeout's pytest_timeout_cancel_timer calls
        signal.signal(signal.SIGPROF, ran_out(_CPU, limit))
        signal.signal(signal.SIGALRM, ran_out(_WALL, WALL_FACTOR * limit))
        signal.setitimer(signal.ITIMER_PROF, limit)
        signal.setitimer(signal.ITIMER_REAL, WALL_FACTOR * limit)
        return True
