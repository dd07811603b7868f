"""Sessions: `start` and `reset`, and what every practice command shares: checked kata names, ending a
running session, restoring a stub, asking before anything is lost, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lora_kata.arguments import kata_names
from lora_kata.grading.implementation import KATAS
from lora_kata.practice.clock import clock
from lora_kata.practice.metadata import KataInfo, kata_info, modules_of, practice_katas
from lora_kata.practice.state import Session, State, changing_state, new_session, now, restore_stub, working_copy
from lora_kata.terminal import UserError, paint


def start(arguments: argparse.Namespace) -> int:
    info = checked_kata(arguments.kata)
    minutes = budget(arguments.minutes, info.minutes)
    root = working_copy()
    own_module = info.name in KATAS
    if arguments.fresh and not own_module:
        raise UserError(
            f"{info.name} has no stub of its own to restore: start it without --fresh, it grades your katas as they "
            "are (lora-kata reset KATA restores one of them)"
        )
    if not arguments.fresh:
        require_kata_file(root, info.name)
    with changing_state(root) as state:
        end_running_session(state, arguments.yes, f"start {info.name}")
        if arguments.fresh:
            restore(root, state, info.name)
        state.session = new_session(root, state, [info.name], minutes)
    waiting = [dependency for dependency in info.depends_on if state.status.get(dependency) != "passed"]
    if waiting:
        which = "which does not pass yet: its checks wait for it" if len(waiting) == 1 else "which do not pass yet"
        print(paint(f"note: {info.name} builds on {', '.join(waiting)}, {which}", "yellow"))
    if state.status.get(info.name) == "passed":
        note = (
            f"note: katas/{info.name}.py passes already: add --fresh to start from the stub"
            if own_module
            else f"note: {info.name} passes already: it counts as solved once one of its katas changes and it passes"
        )
        print(paint(note, "yellow"))
    print(paint(f"started {info.name} ({info.difficulty}): {clock(minutes * 60)} on the clock", "bold"))
    if own_module:
        print(f"  edit katas/{info.name}.py (its docstrings are the spec), then")
    else:
        print("  no file of its own: it fine-tunes a tiny Llama with your katas, graded together (README.md:")
        print(f"  The capstone): {', '.join(modules_of(info.name))}; then")
    print("  lora-kata check    grade it                 lora-kata watch    grade it on every save")
    print(f"  lora-kata hint     one of {len(info.hints)} hints           lora-kata solution {info.name}")
    return 0


def reset(arguments: argparse.Namespace) -> int:
    kata = checked_kata(arguments.kata).name
    if kata not in KATAS:
        raise UserError(f"{kata} has no file of its own to reset: lora-kata reset KATA restores one of its katas")
    root = working_copy()
    with changing_state(root) as state:
        restore(root, state, kata)
    return 0


def checked_kata(name: str) -> KataInfo:
    """The kata called ``name``, checked: a typo gets the nearest name."""
    return kata_info(kata_names([name])[0])


def require_kata_file(root: Path, kata: str) -> None:
    """Refuse (one line) when a module ``kata`` is graded over is missing: its own, or the capstone's katas'."""
    for module in modules_of(kata):
        if not (root / "katas" / f"{module}.py").is_file():
            raise UserError(f"katas/{module}.py is missing: lora-kata reset {module} restores the stub")


def session_katas(name: str | None, state: State, command: str) -> list[str]:
    """The kata named, else the running session's; a one-line error when there is neither."""
    if name:
        return [checked_kata(name).name]
    if state.session is None:
        example = f"lora-kata {command} {practice_katas()[0].name}"
        raise UserError(f"no session running: name a kata ({example}) or start one (lora-kata start KATA)")
    return list(state.session.katas)


def budget(minutes: float | None, default: float) -> float:
    if minutes is None:
        return default
    if minutes <= 0:
        raise UserError(f"--minutes {minutes:g}: give a positive number of minutes")
    return minutes


def end_running_session(state: State, yes: bool, doing: str) -> None:
    """End the running session, if any, after asking (``yes``: without asking); refusing is a UserError."""
    session = state.session
    if session is None:
        return
    what = "the mock interview" if session.mock else f"the session on {session.katas[0]}"
    running = f"{what} is running ({clock(session.seconds(now()))} used)"
    if not confirm(f"{running[0].upper()}{running[1:]}. End it and {doing}?", yes):
        raise UserError(f"{running}: finish it with lora-kata check, or add --yes to end it and {doing}")
    close_session(state, now())
    print(paint(f"ended {what}: it is in lora-kata history", "dim"))


def close_session(state: State, at: float) -> None:
    """Move the running session to the history, ended at ``at``."""
    assert state.session is not None
    state.session.ended = at
    state.history.append(state.session)
    state.session = None


def restore(root: Path, state: State, kata: str) -> None:
    """Restore the stub of ``kata`` (backing up the learner's file) and forget its status and hints."""
    backup = restore_stub(root, kata)
    state.status.pop(kata, None)
    state.hints.pop(kata, None)
    kept = f"; your file is saved as {backup.relative_to(root)}" if backup is not None else ""
    print(f"restored the stub of katas/{kata}.py{kept}")


def confirm(question: str, yes: bool) -> bool:
    """Whether the user agrees: ``yes`` does; a terminal is asked; anything else (scripts, CI) declines."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}
    except EOFError:
        return False


def session_json(session: Session, at: float) -> dict[str, Any]:
    return {**asdict(session), "seconds": session.seconds(at)}


def print_json(document: object) -> None:
    print(json.dumps(document, indent=2))
