"""Grade an implementation in a child process with a wall-clock limit and a memory cap, so an endless
loop, ``os._exit``, a segfault or a huge allocation costs that submission its points and nothing else."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lora_kata.grading.expected import complete
from lora_kata.grading.implementation import CHECKS, ENGINE, GRADED
from lora_kata.grading.reaper import TIMED_OUT, Status, leftover_note
from lora_kata.grading.results import CheckResult, read_journal
from lora_kata.grading.tamper import changed_files, fingerprint
from lora_kata.grading.worker import check_timeout_environment

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_MB = 4096
EARLY_EXIT = "the grading process stopped before finishing: does the submission call os._exit or sys.exit?"


@dataclass(frozen=True)
class Grading:
    """What an isolated grading produced: the results, how long it took, and what went wrong, if anything."""

    results: list[CheckResult]
    seconds: float
    problem: str  # '' when the grading process ran to its end


def grade_isolated(
    implementation: Path,
    katas: Sequence[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    check_timeout_s: float | None = None,
    launch: Launch | None = None,
) -> Grading:
    """Grade ``implementation`` in fresh processes; checks never finished count as failed (those that skip on
    this machine whatever the submission, skipped: every grading has the same maximum score).

    When a kata kills its grading process, only that kata loses its unfinished checks: the katas
    after it are graded in a new process, within the same overall ``timeout_s``. ``launch`` starts each
    grading process (default: a fresh Python, ``launch_process``).
    """
    start = time.perf_counter()
    remaining, results, problems = list(katas or GRADED), [], []
    while remaining:
        time_left = timeout_s - (time.perf_counter() - start)
        batch, problem = _run_worker(
            implementation, remaining, time_left, memory_mb, timeout_s, check_timeout_s, launch
        )
        unfinished = [result for result in batch if result.message.startswith("not run")]
        if not batch:
            problems.append(problem or EARLY_EXIT)
            break
        if not unfinished:
            results.extend(batch)
            problems += [problem] if problem else []
            break
        culprit = unfinished[0].kata
        started = remaining[: remaining.index(culprit) + 1]
        results.extend(result for result in batch if result.kata in started)
        problems.append(f"{culprit}: {problem or EARLY_EXIT}")
        remaining = remaining[len(started) :] if time.perf_counter() - start < timeout_s else []
    seconds = time.perf_counter() - start  # the grading's: what complete() may take is the grader's own
    # Checks never reached count as failed, as for any submission, except those that skip here for everyone.
    results = complete(results, katas, problems[-1] if problems else EARLY_EXIT)
    return Grading(results, seconds, "; ".join(problems))


def _run_worker(
    implementation: Path,
    katas: Sequence[str],
    time_left_s: float,
    memory_mb: int,
    timeout_s: float,
    check_timeout_s: float | None = None,
    launch: Launch | None = None,
) -> tuple[list[CheckResult], str]:
    """The journalled results of one grading process, and what ended it early ('' if nothing did)."""
    with tempfile.TemporaryDirectory(prefix="lora-kata-") as scratch:
        # The worker runs a private copy of the grader (the checks and this engine): a submission that edits
        # the grader's files changes only that copy, and is caught by comparing it afterwards.
        copy = Path(scratch)
        for folder in (CHECKS, ENGINE):
            shutil.copytree(folder, copy / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
        pristine = fingerprint(copy)
        journal = copy / "journal.jsonl"
        launcher = launch or launch_process
        status, stderr = launcher(copy, implementation, journal, katas, time_left_s, memory_mb, check_timeout_s)
        if status.timed_out:
            problem = f"grading took longer than {timeout_s:g} s and was stopped"
        else:
            problem = _problem(status.returncode, stderr, memory_mb)
        results = read_journal(journal, problem or EARLY_EXIT)
        edited = changed_files(pristine, copy)
        if edited:
            problem = f"tampering: the submission edited the grader's {sorted(p.name for p in edited)}; no points"
            results = [replace(r, outcome="failed", message=problem) for r in results if r.outcome != "skipped"]
        return results, "; ".join(filter(None, [problem, leftover_note(status.leftovers)]))


# Runs one grading process: (private copy, implementation, journal, katas, seconds left, memory cap, check time
# limit or None) -> how it ended and its stderr. ``launch_process`` starts a fresh Python; ``server.py`` forks a
# preloaded one.
Launch = Callable[[Path, Path, Path, Sequence[str], float, int, float | None], tuple[Status, str]]
REAPER_GRACE_S = 10.0  # the reaping worker stops the grading at its limit; this long after it, we stop the worker


def launch_process(
    copy: Path,
    implementation: Path,
    journal: Path,
    katas: Sequence[str],
    time_left_s: float,
    memory_mb: int,
    check_timeout_s: float | None = None,
) -> tuple[Status, str]:
    """Grade in a fresh Python process started from the private copy of the grader."""
    status_file = copy / "status.json"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")])}
    environment.update(check_timeout_environment(check_timeout_s))
    worker = copy / ENGINE.name / "grading" / "worker.py"
    limit = ["--time-limit", f"{max(time_left_s, 0.1):.3f}", "--status", str(status_file)]
    command = [sys.executable, str(worker), *limit, str(implementation), str(journal), *katas]
    process = subprocess.Popen(
        command,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so everything it starts can be ended with it
        preexec_fn=lambda: _cap_memory(memory_mb),
    )
    stderr, timed_out = b"", False
    try:
        _, stderr = process.communicate(timeout=max(time_left_s, 0.1) + REAPER_GRACE_S)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _end_process_group(process)
    status = Status.read(status_file) or Status(TIMED_OUT if timed_out else process.returncode)
    return status, stderr.decode(errors="replace")


def _cap_memory(memory_mb: int) -> None:
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _problem(returncode: int, stderr: str, memory_mb: int) -> str:
    """'' for a grading that ran to its end (pytest exit 0 or 1), else what happened, in words."""
    if returncode in (0, 1):
        return ""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"the grading process was killed by {name} (a crash in the submission, or over {memory_mb} MB?)"
    last_line = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return f"the grading process exited with code {returncode}" + (f": {last_line}" if last_line else "")


def _end_process_group(process: subprocess.Popen) -> None:
    """Kill the process and anything it left running in its group; reap the process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
