"""`hint` and `solution`: the next of a kata's hints, and the reference answer, recorded with the session."""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

from lora_kata.grading.implementation import KATAS
from lora_kata.practice.metadata import kata_info, modules_of
from lora_kata.practice.sessions import checked_kata, confirm, session_katas
from lora_kata.practice.state import State, changing_state, load_state, working_copy
from lora_kata.terminal import UserError, is_terminal, paint


def hint(arguments: argparse.Namespace) -> int:
    """Show the next hint; it counts as used only once it reached stdout (not when stdout is closed or gone)."""
    root = working_copy()
    with changing_state(root) as state:  # saved only when the block ends without an error
        info = kata_info(_hint_kata(arguments.kata, state))
        session = state.session if state.session is not None and info.name in state.session.katas else None
        counts = session.hints if session is not None else state.hints
        shown = min(counts.get(info.name, 0) + 1, len(info.hints))
        _require_stdout("the hint")
        width = min(shutil.get_terminal_size((100, 24)).columns, 100)
        for number, text in enumerate(info.hints[:shown], start=1):
            label = f"hint {number}/{len(info.hints)}: "
            wrapped = textwrap.fill(text, width, initial_indent=label, subsequent_indent="  ")
            print(wrapped if number == shown else paint(wrapped, "dim"))
        if shown == len(info.hints):
            print(paint(f"that was the last hint: lora-kata solution {info.name} shows the reference answer", "dim"))
        if session is not None:
            print(paint(f"recorded with the session: {shown} of {len(info.hints)} hints used", "dim"))
        sys.stdout.flush()  # a reader gone away raises here (BrokenPipeError): nothing is recorded
        counts[info.name] = shown
    return 0


def _require_stdout(what: str) -> None:
    if sys.stdout is None:
        raise UserError(f"stdout is closed, so {what} was not shown, nor recorded: run the command with stdout open")


def solution(arguments: argparse.Namespace) -> int:
    kata = checked_kata(arguments.kata).name
    if kata not in KATAS:
        print(f"{kata} has no reference answer of its own: it runs the katas it builds on, whose answers are its own:")
        for module in modules_of(kata):
            print(f"  lora-kata solution {module:<16}solutions/{module}.py")
        return 0
    root = working_copy()
    path = root / "solutions" / f"{kata}.py"
    if not path.is_file():
        raise UserError(f"solutions/{kata}.py is missing: restore it with git checkout -- solutions/{kata}.py")
    session = load_state(root).session
    if session is not None and kata in session.katas and kata not in session.revealed:
        if not confirm(f"A session on {kata} is running: reveal the solution (recorded as revealed)?", arguments.yes):
            print(f"lora-kata: not revealed, the session on {kata} runs on: add --yes to reveal it", file=sys.stderr)
            return 1
        _require_stdout("the solution")
        with changing_state(root) as state:  # recorded as revealed only once it was shown
            _show_source(path)
            sys.stdout.flush()
            if state.session is not None:
                state.session.revealed.append(kata)
        return 0
    _require_stdout("the solution")
    _show_source(path)
    return 0


def _hint_kata(name: str | None, state: State) -> str:
    """The kata named, else the session's first kata not yet solved."""
    katas = session_katas(name, state, "hint")
    session = state.session
    unsolved = [kata for kata in katas if session is None or kata not in session.solved]
    return (unsolved or katas)[0]


def _show_source(path: Path) -> None:
    """Print a Python file, highlighted by rich on a terminal when it is installed."""
    source = path.read_text()
    if is_terminal(sys.stdout):
        try:
            from rich.console import Console
            from rich.syntax import Syntax
        except ImportError:
            pass
        else:
            Console().print(Syntax(source, "python", line_numbers=True, background_color="default"))
            return
    print(source, end="")
