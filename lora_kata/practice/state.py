"""The learner's working copy as practice sees it: where it is, the clock, the state file, and stubs.

The working copy is found from the current folder upward, else ``LORA_KATA_ROOT``, else it is this
repository (``find_working_copy``): its ``katas/`` are practised,
and its ``.lora-kata/`` (git-ignored) holds ``state.json`` and the backups of the learner's files.
``LORA_KATA_NOW`` (epoch seconds) sets the sessions' clock to that time, so tests can let time pass
without sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_kata.grading.implementation import KATAS, REPOSITORY
from lora_kata.practice.metadata import modules_of
from lora_kata.terminal import UserError

VERSION = 1  # of the state file's format
STUB_MARK = b"raise NotImplementedError"


@dataclass
class Session:
    """One timed attempt at a kata, or at several under one clock (a mock interview). Times in epoch seconds."""

    katas: list[str]
    started: float
    minutes: float  # the time budget
    mock: bool = False
    hints: dict[str, int] = field(default_factory=dict)  # kata -> hints shown
    revealed: list[str] = field(default_factory=list)  # katas whose solution was shown
    solved: dict[str, float] = field(default_factory=dict)  # kata -> seconds from the start to its first pass
    ended: float | None = None
    # kata -> digest of its file at the start, for the katas that passed already then: solved only once changed
    passed_before: dict[str, str] = field(default_factory=dict)

    def seconds(self, at: float) -> float:
        """Seconds on the clock at ``at`` (or when the session ended); never negative."""
        return max(0.0, (self.ended if self.ended is not None else at) - self.started)

    def is_solved(self) -> bool:
        return set(self.katas) <= set(self.solved)


@dataclass
class State:
    """Everything practice remembers between commands."""

    session: Session | None = None  # the running one
    history: list[Session] = field(default_factory=list)  # ended sessions, oldest first
    status: dict[str, str] = field(default_factory=dict)  # kata -> "passed" or "failing" at its last check
    hints: dict[str, int] = field(default_factory=dict)  # kata -> hints shown outside sessions


def working_copy() -> Path:
    """The folder whose katas/ are practised (see ``find_working_copy``)."""
    return find_working_copy()[0]


def find_working_copy() -> tuple[Path, str]:
    """The working copy and how it was found: the nearest folder from the current one upward that is a
    lora-kata working copy (as git finds its repository), else $LORA_KATA_ROOT, else the copy this
    lora-kata runs from."""
    with contextlib.suppress(OSError):  # a current folder that was removed has no path
        here = Path.cwd()
        for folder in (here, *here.parents):
            if is_working_copy(folder):
                return folder, "the current folder is in it"
    chosen = os.environ.get("LORA_KATA_ROOT")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not (root / "katas").is_dir():
            raise UserError(
                f"LORA_KATA_ROOT={chosen} has no katas/ folder: set LORA_KATA_ROOT to your clone of lora-kata"
            )
        return root, "LORA_KATA_ROOT"
    if not (REPOSITORY / "katas").is_dir():
        raise UserError(
            f"no lora-kata working copy here, nor in {REPOSITORY}: cd into your clone, or set LORA_KATA_ROOT to it"
        )
    return REPOSITORY, "the copy lora-kata runs from"


def is_working_copy(folder: Path) -> bool:
    """Whether ``folder`` is a lora-kata working copy: a katas/ folder of kata modules, and a pyproject.toml
    naming the project lora-kata."""
    katas = folder / "katas"
    if not any((katas / f"{kata}.py").is_file() for kata in KATAS):
        return False
    try:
        project = (folder / "pyproject.toml").read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"""^name\s*=\s*["']lora-kata["']""", project, re.MULTILINE) is not None


def new_session(root: Path, state: State, katas: list[str], minutes: float, mock: bool = False) -> Session:
    """A session starting now; the katas that pass already are noted with their file's digest, so that only
    a pass of a changed file counts as solved in it."""
    passing = [kata for kata in katas if state.status.get(kata) == "passed"]
    return Session(katas, now(), minutes, mock=mock, passed_before={k: file_digest(root, k) for k in passing})


def file_digest(root: Path, kata: str) -> str:
    """The SHA-256 of katas/<kata>.py, or of the capstone's modules one after another ('' when one cannot be read)."""
    digest = hashlib.sha256()
    try:
        for module in modules_of(kata):
            digest.update((root / "katas" / f"{module}.py").read_bytes())
    except OSError:
        return ""
    return digest.hexdigest()


def now() -> float:
    """Epoch seconds: $LORA_KATA_NOW when set, else the real time."""
    fixed = os.environ.get("LORA_KATA_NOW")
    if not fixed:
        return time.time()
    try:
        return float(fixed)
    except ValueError:
        raise UserError(f"LORA_KATA_NOW={fixed!r} is not a number: give epoch seconds, or unset it") from None


def stamp(at: float) -> str:
    """``at`` as a UTC timestamp fit for a file name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def load_state(root: Path) -> State:
    """The state of ``root``; an unreadable or other-version file is set aside with a one-line warning."""
    path = _state_file(root)
    if not path.exists():
        return State()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(
            f"cannot read {path} ({error.strerror}): make it a readable file, or move it away to start afresh"
        ) from None
    try:
        document = json.loads(data.decode("utf-8"))  # not UTF-8: a ValueError (UnicodeDecodeError) too
        if not isinstance(document, dict) or document.get("version") != VERSION:
            version = document.get("version") if isinstance(document, dict) else None
            raise ValueError(f"format version {version!r}, this lora-kata reads version {VERSION}")
        return _parse(document)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:  # RecursionError: nesting
        aside = _unused(path.with_name(f"{path.name}.corrupt-{stamp(time.time())}"))
        path.replace(aside)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(
            f"lora-kata: warning: {path} was unreadable ({reason}); moved it to {aside.name} and started afresh",
            file=sys.stderr,
        )
        return State()


def save_state(root: Path, state: State) -> None:
    """Write ``state`` atomically: a reader sees the old file or the new one, never half of one."""
    path = _state_file(root)
    document = {"version": VERSION, **asdict(state)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".state-", suffix=".tmp", delete=False) as file:
            file.write(json.dumps(document, indent=1) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(file.name, path)
    except OSError as error:
        raise UserError(
            f"cannot write {path} ({error.strerror}): lora-kata keeps its state in {path.parent}, "
            "which must be a folder you can write in"
        ) from None


@contextmanager
def changing_state(root: Path) -> Iterator[State]:
    """The state, read now and written back when the block ends without an error."""
    state = load_state(root)
    yield state
    save_state(root, state)


def _state_file(root: Path) -> Path:
    return root / ".lora-kata" / "state.json"


def _parse(document: dict[str, Any]) -> State:
    """A ``State`` from its JSON form; raises ValueError, TypeError, KeyError or AttributeError on a bad shape."""
    state = State(
        _session(document["session"]) if document["session"] is not None else None,
        [_session(fields) for fields in document["history"]],
        dict(document["status"]),
        dict(document["hints"]),
    )
    names = [*state.status, *state.status.values(), *state.hints]
    if not all(isinstance(name, str) for name in names) or not all(_is_number(n) for n in state.hints.values()):
        raise ValueError("status or hints of the wrong type")
    return state


def _session(fields: dict[str, Any]) -> Session:
    session = Session(**fields)
    names = [*session.katas, *session.revealed, *session.hints, *session.solved]
    names += [*session.passed_before, *session.passed_before.values()]
    numbers = [session.started, session.minutes, *session.hints.values(), *session.solved.values()]
    numbers += [session.ended] if session.ended is not None else []
    if not all(isinstance(name, str) for name in names) or not all(_is_number(number) for number in numbers):
        raise ValueError("a session with values of the wrong type")
    return session


LARGEST = 1e11  # seconds since 1970 (the year 5138), minutes or a count: anything larger is no time of ours


def _is_number(value: object) -> bool:
    """A finite number that a clock, a budget or a count can be (1e400 reads as inf, NaN as nan)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -LARGEST <= value <= LARGEST


def _unused(path: Path) -> Path:
    """``path``, or the same name with -2, -3... before the suffix when it is taken."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def restore_stub(root: Path, kata: str) -> Path | None:
    """Put the shipped stub back in katas/<kata>.py after backing up the learner's file.

    Returns the backup, or None when there was nothing to back up (no file, or the stub itself).
    """
    stub = _stub_from_git(root, kata)
    target = root / "katas" / f"{kata}.py"
    backup = None
    if target.exists() and _read_bytes(target) != stub:
        backup = _unused(root / ".lora-kata" / "backups" / f"{kata}-{stamp(time.time())}.py")
        try:
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(target, backup)
        except OSError as error:
            raise UserError(
                f"cannot back up katas/{kata}.py to {backup.parent} ({error.strerror}), so it was left as it was: "
                f"make {backup.parent} a folder you can write in, or copy your file elsewhere first"
            ) from None
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(stub)
    temporary.replace(target)
    return backup


def _read_bytes(path: Path) -> bytes:
    """The contents of the learner's file ``path``; a one-line error when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}): it should be your kata's Python file") from None


def _stub_from_git(root: Path, kata: str) -> bytes:
    """The newest version of katas/<kata>.py in git history that is still a stub."""
    relative = f"katas/{kata}.py"
    try:
        log = _git(root, "log", "--format=%H", "--", relative)
    except FileNotFoundError:
        raise UserError(f"git is not installed: lora-kata restores {relative} from git history; install git") from None
    if log.returncode != 0:
        raise UserError(f"{root} is not a git clone: lora-kata restores {relative} from git history; clone the repo")
    for commit in log.stdout.decode().split():
        version = _git(root, "show", f"{commit}:./{relative}")  # ./ : relative to root, not to git's top
        if version.returncode == 0 and STUB_MARK in version.stdout:
            return version.stdout
    raise UserError(f"git history holds no stub of {relative}: restore it by hand from the lora-kata repository")


def _git(root: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *arguments], cwd=root, capture_output=True, check=False, stdin=subprocess.DEVNULL)
