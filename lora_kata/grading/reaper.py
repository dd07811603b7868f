"""Run a grading in a process of its own and leave nothing behind it.

The process that calls ``run_reaped`` becomes a child subreaper (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``):
whatever the grading starts, even a descendant that detaches itself (``start_new_session=True``, a double
fork), stays among its descendants instead of passing to init. When the grading process ends (or runs out of
time) its process group is killed, and then every descendant still running, each named in the status as a
leftover. Elsewhere (no prctl, no /proc) only the process group is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
TIMED_OUT = -1000  # the status's returncode when the grading process ran out of time


@dataclass(frozen=True)
class Status:
    """How a reaped grading ended: its exit code (negative: killed by that signal; ``TIMED_OUT``), and the
    command lines of the processes it left running, which were killed."""

    returncode: int
    leftovers: list[str] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return self.returncode == TIMED_OUT

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> Status | None:
        try:
            document = json.loads(path.read_text())
            return cls(int(document["returncode"]), [str(line) for line in document["leftovers"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def leftover_note(leftovers: list[str]) -> str:
    """The problem line for processes a grading left running ('' for none)."""
    if not leftovers:
        return ""
    shown = ", ".join(repr(line[:60]) for line in leftovers[:3]) + (", ..." if len(leftovers) > 3 else "")
    count = f"{len(leftovers)} process{'es' if len(leftovers) > 1 else ''}"
    return f"the submission left {count} running after its grading ({shown}); killed"


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def run_reaped(grading: Callable[[], int], time_limit_s: float, memory_mb: int | None = None) -> Status:
    """Fork a process that runs ``grading()`` in a new session (its own process group), under an address-space
    cap of ``memory_mb`` if given, and exits with what it returns; wait at most ``time_limit_s``; then kill the
    group and every descendant left. Call from a single-threaded process."""
    subreaper = become_subreaper()
    pid = os.fork()
    if pid == 0:  # the grading process
        code = 70
        try:
            os.setsid()
            if memory_mb is not None:
                limit = memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            code = grading()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    returncode = _wait(pid, time_limit_s)
    return Status(returncode, _kill_leftovers(pid) if subreaper else _kill_group(pid))


def _wait(pid: int, time_limit_s: float) -> int:
    """The exit code of ``pid`` (negative: the signal that killed it), or ``TIMED_OUT`` after ``time_limit_s``."""
    deadline = time.monotonic() + max(time_limit_s, 0.1)
    descriptor = None
    with contextlib.suppress(AttributeError, OSError):
        descriptor = os.pidfd_open(pid)  # Linux 5.3+: readable when the process ends
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return TIMED_OUT
            if descriptor is not None:
                select.select([descriptor], [], [], left)
            else:
                time.sleep(min(left, 0.02))
    finally:
        if descriptor is not None:
            os.close(descriptor)


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every living process below ``root`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the field after the command's closing parenthesis: state, then the parent's pid
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                if fields[0] != "Z":
                    parents[int(entry)] = int(fields[1])
    below, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in below:
                below[pid] = _command_line(pid)
                frontier.append(pid)
    return below


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid}"


def _kill_group(pid: int) -> list[str]:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return []


def _kill_leftovers(pid: int, rounds: int = 50) -> list[str]:
    """Kill the grading's process group, then every descendant of this process until none is left (a killed
    process's children come to us as orphans), and reap them. Returns the command lines of the processes that
    were still running when the grading process ``pid`` had ended."""
    left = descendants(os.getpid())
    _kill_group(pid)
    for _ in range(rounds):
        alive = descendants(os.getpid())
        for victim in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
        _reap_children()
        if not alive:
            break
        left = {**alive, **left}
        time.sleep(0.01)
    return list(left.values())


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
