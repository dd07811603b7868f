"""The practice commands of `lora-kata`: timed sessions, checks, hints, solutions, history, mock interviews.

A session puts one kata (or, in a mock interview, several) under a clock with a time budget. `check`
grades in a separate process; the first time every check of a session's kata passes, that kata is
solved at that time, and a session whose katas are all solved goes to the history. Nothing here
waits for input unless stdin is a terminal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from grader.cli import kata_names
from grader.isolation import grade_isolated
from grader.metadata import KataInfo, in_dependency_order, kata_info, practice_katas
from grader.results import CheckResult, kata_totals, score_table
from grader.state import Session, State, changing_state, load_state, now, restore_stub, working_copy
from grader.terminal import UserError, paint
from grader.watching import snapshot, wait_for_save

SPARKS = "▁▂▃▄▅▆▇█"
MOCK_MINUTES = 60.0
KATA_HELP = "a kata, as lora-kata list names it"
STATUS_COLOURS = {"todo": "dim", "failing": "red", "passed": "green"}
MOCK_DESCRIPTION = """\
A mock interview: several katas under one clock (default: every kata, each after the katas it
builds on). While it runs, `lora-kata check` grades all of its katas (`check KATA` one of them),
`watch` re-checks them on every save, and hints and solutions shown are recorded with it. It ends
by itself when every kata passes, or with `lora-kata mock --finish`, which grades them one last
time and prints the summary: each kata's checks, when it was solved, the hints used."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add list, start, check, watch, hint, solution, reset, history and mock to `lora-kata`."""
    listing = commands.add_parser("list", help="every kata: difficulty, time budget, status, best time")
    _json_option(listing)
    listing.set_defaults(run=_list)

    start = commands.add_parser("start", help="start a timed session on a kata")
    start.add_argument("kata", metavar="KATA", help=KATA_HELP)
    start.add_argument("--minutes", type=float, metavar="N", help="time budget (default: the kata's)")
    start.add_argument("--fresh", action="store_true", help="restore the stub first (your file is backed up)")
    _yes_option(start, "end a running session without asking")
    start.set_defaults(run=_start)

    check = commands.add_parser("check", help="grade a kata (default: the session's) and show the time used")
    check.add_argument("kata", nargs="?", metavar="KATA", help=f"{KATA_HELP} (default: the session's)")
    _json_option(check)
    check.set_defaults(run=_check)

    watch = commands.add_parser("watch", help="check on every save, with a live countdown (Ctrl-C stops)")
    watch.add_argument("kata", nargs="?", metavar="KATA", help=f"{KATA_HELP} (default: the session's)")
    watch.add_argument("--max-checks", type=int, default=0, help=argparse.SUPPRESS)  # ends it in tests
    watch.set_defaults(run=_watch)

    hint = commands.add_parser("hint", help="the next hint for a kata (default: the session's)")
    hint.add_argument("kata", nargs="?", metavar="KATA", help=f"{KATA_HELP} (default: the session's)")
    hint.set_defaults(run=_hint)

    solution = commands.add_parser("solution", help="show the reference answer (asks first during a session)")
    solution.add_argument("kata", metavar="KATA", help=KATA_HELP)
    _yes_option(solution, "reveal it during a session without asking")
    solution.set_defaults(run=_solution)

    reset = commands.add_parser("reset", help="restore a kata's stub (your file is backed up first)")
    reset.add_argument("kata", metavar="KATA", help=KATA_HELP)
    reset.set_defaults(run=_reset)

    history = commands.add_parser("history", help="past sessions and a chart of each kata's solve times")
    _json_option(history)
    history.set_defaults(run=_history)

    mock = commands.add_parser(
        "mock",
        help="a mock interview: several katas under one clock",
        description=MOCK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mock.add_argument("--minutes", type=float, metavar="N", help=f"time budget (default {MOCK_MINUTES:g})")
    mock.add_argument("--kata", action="append", metavar="NAME", help="include this kata (repeatable; default all)")
    mock.add_argument("--fresh", action="store_true", help="restore the stubs first (your files are backed up)")
    mock.add_argument("--finish", action="store_true", help="grade the running mock interview, end it, summarise")
    _yes_option(mock, "end a running session without asking")
    mock.set_defaults(run=_mock)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead")


def _yes_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help=what)


# Commands


def _list(arguments: argparse.Namespace) -> int:
    state = load_state(working_copy())
    rows = [
        {
            "kata": info.name,
            "title": info.title,
            "difficulty": info.difficulty,
            "minutes": info.minutes,
            "depends_on": list(info.depends_on),
            "status": state.status.get(info.name, "todo"),
            "best_seconds": min(_solve_times(state, info.name), default=None),
            "running": state.session is not None and info.name in state.session.katas,
        }
        for info in practice_katas()
    ]
    if arguments.json:
        _print_json(rows)
        return 0
    print(paint(f"{'kata':<16}{'level':<8}{'budget':>7}  {'status':<9}{'best':>7}  title", "bold"))
    for row in rows:
        status = paint(f"{row['status']:<9}", STATUS_COLOURS[row["status"]])
        best = _clock(row["best_seconds"]) if row["best_seconds"] is not None else "-"
        running = paint("  (session running)", "yellow") if row["running"] else ""
        budget = _clock(row["minutes"] * 60)
        print(f"{row['kata']:<16}{row['difficulty']:<8}{budget:>7}  {status}{best:>7}  {row['title']}{running}")
    todo = [row["kata"] for row in rows if row["status"] != "passed"]
    if todo:
        print(paint(f"next: lora-kata start {todo[0]}", "dim"))
    else:
        print(paint("every kata passes: time yourself again with lora-kata start KATA --fresh or mock", "dim"))
    return 0


def _start(arguments: argparse.Namespace) -> int:
    info = _kata(arguments.kata)
    minutes = _budget(arguments.minutes, info.minutes)
    root = working_copy()
    if not arguments.fresh:
        _require_kata_file(root, info.name)
    with changing_state(root) as state:
        _end_running_session(state, arguments.yes, f"start {info.name}")
        if arguments.fresh:
            _restore(root, state, info.name)
        state.session = Session([info.name], now(), minutes)
    for dependency in info.depends_on:
        if state.status.get(dependency) != "passed":
            note = f"note: {info.name} builds on {dependency}, which does not pass yet: its checks wait for it"
            print(paint(note, "yellow"))
    if state.status.get(info.name) == "passed":
        print(paint(f"note: katas/{info.name}.py passes already: add --fresh to start from the stub", "yellow"))
    print(paint(f"started {info.name} ({info.difficulty}): {_clock(minutes * 60)} on the clock", "bold"))
    print(f"  edit katas/{info.name}.py (its docstrings are the spec), then")
    print("  lora-kata check    grade it                 lora-kata watch    grade it on every save")
    print(f"  lora-kata hint     one of {len(info.hints)} hints           lora-kata solution {info.name}")
    return 0


def _check(arguments: argparse.Namespace) -> int:
    root = working_copy()
    return _grade(root, _session_katas(arguments.kata, load_state(root), "check"), arguments.json)


def _watch(arguments: argparse.Namespace) -> int:
    root = working_copy()
    katas = _session_katas(arguments.kata, load_state(root), "watch")
    folder = root / "katas"
    checks = 0
    try:
        while True:
            before = snapshot(folder)
            code = _grade(root, katas, as_json=False)
            checks += 1
            if code == 0 or checks == arguments.max_checks:
                return code
            session = load_state(root).session
            print(paint("waiting for a save in katas/ (Ctrl-C stops)", "dim"), flush=True)
            wait_for_save(folder, before, lambda session=session: _countdown(session, katas))
            print(paint(f"{time.strftime('%H:%M:%S')} a file changed: checking again", "dim"), flush=True)
    except KeyboardInterrupt:
        running = load_state(root).session is not None
        print("\nstopped watching" + ("; the session's clock runs on" if running else ""))
        return 130


def _hint(arguments: argparse.Namespace) -> int:
    root = working_copy()
    with changing_state(root) as state:
        info = kata_info(_hint_kata(arguments.kata, state))
        session = state.session if state.session is not None and info.name in state.session.katas else None
        counts = session.hints if session is not None else state.hints
        counts[info.name] = shown = min(counts.get(info.name, 0) + 1, len(info.hints))
    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    for number, text in enumerate(info.hints[:shown], start=1):
        label = f"hint {number}/{len(info.hints)}: "
        wrapped = textwrap.fill(text, width, initial_indent=label, subsequent_indent="  ")
        print(wrapped if number == shown else paint(wrapped, "dim"))
    if shown == len(info.hints):
        print(paint(f"that was the last hint: lora-kata solution {info.name} shows the reference answer", "dim"))
    if session is not None:
        print(paint(f"recorded with the session: {shown} of {len(info.hints)} hints used", "dim"))
    return 0


def _solution(arguments: argparse.Namespace) -> int:
    kata = _kata(arguments.kata).name
    root = working_copy()
    path = root / "solutions" / f"{kata}.py"
    if not path.is_file():
        raise UserError(f"solutions/{kata}.py is missing: restore it with git checkout -- solutions/{kata}.py")
    session = load_state(root).session
    if session is not None and kata in session.katas and kata not in session.revealed:
        if not _confirm(f"A session on {kata} is running: reveal the solution (recorded as revealed)?", arguments.yes):
            print(f"lora-kata: not revealed, the session on {kata} runs on: add --yes to reveal it", file=sys.stderr)
            return 1
        with changing_state(root) as state:
            if state.session is not None:
                state.session.revealed.append(kata)
    _show_source(path)
    return 0


def _reset(arguments: argparse.Namespace) -> int:
    kata = _kata(arguments.kata).name
    root = working_copy()
    with changing_state(root) as state:
        _restore(root, state, kata)
    return 0


def _history(arguments: argparse.Namespace) -> int:
    state = load_state(working_copy())
    at = now()
    if arguments.json:
        running = _session_json(state.session, at) if state.session is not None else None
        _print_json({"sessions": [_session_json(session, at) for session in state.history], "running": running})
        return 0
    sessions = [*state.history, *([state.session] if state.session is not None else [])]
    if not sessions:
        print(f"no sessions yet: lora-kata start {practice_katas()[0].name} starts one")
        return 0
    print(paint(f"{'date':<18}{'kata':<16}{'time':>8}{'budget':>8}{'hints':>7}  result", "bold"))
    for session in sessions:
        date = time.strftime("%Y-%m-%d %H:%M", time.localtime(session.started))
        kata = f"mock ({len(session.katas)} katas)" if session.mock else session.katas[0]
        hints = sum(session.hints.values())
        budget = _clock(session.minutes * 60)
        print(f"{date:<18}{kata:<16}{_clock(session.seconds(at)):>8}{budget:>8}{hints:>7}  {_result(session)}")
    charts = [(info.name, _solve_times(state, info.name)) for info in practice_katas()]
    charts = [(kata, times) for kata, times in charts if times]
    if charts:
        print(paint("\nsolve times, oldest first (lower is faster; solutions revealed left out)", "bold"))
    for kata, times in charts:
        trend = f"{_clock(times[0])} -> {_clock(times[-1])}, best {_clock(min(times))}" if len(times) > 1 else ""
        print(f"{kata:<16}{_sparkline(times[-30:]):<32}{trend or _clock(times[0])}")
    return 0


def _mock(arguments: argparse.Namespace) -> int:
    root = working_copy()
    if arguments.finish:
        session = load_state(root).session
        if session is None or not session.mock:
            raise UserError("no mock interview running: start one with lora-kata mock")
        return _grade(root, session.katas, as_json=False, end_session=True)
    chosen = [_kata(name).name for name in arguments.kata] if arguments.kata else [k.name for k in practice_katas()]
    katas = in_dependency_order(chosen)
    minutes = _budget(arguments.minutes, MOCK_MINUTES)
    if not arguments.fresh:
        for kata in katas:
            _require_kata_file(root, kata)
    with changing_state(root) as state:
        _end_running_session(state, arguments.yes, "start a mock interview")
        for kata in katas if arguments.fresh else []:
            _restore(root, state, kata)
        state.session = Session(katas, now(), minutes, mock=True)
    clock = _clock(minutes * 60)
    print(paint(f"mock interview: {len(katas)} katas, {clock} on the clock; solve them in this order:", "bold"))
    for kata in katas:
        info = kata_info(kata)
        print(f"  {kata:<16}{info.difficulty:<8}about {_clock(info.minutes * 60)}   katas/{kata}.py")
    print("lora-kata check grades them all (check KATA one); lora-kata mock --finish ends it with a summary")
    if any(state.status.get(kata) == "passed" for kata in katas):
        print(paint("note: some of these pass already: add --fresh to start from the stubs", "yellow"))
    return 0


# Grading against the clock


def _grade(root: Path, katas: list[str], as_json: bool, end_session: bool = False) -> int:
    """Grade ``katas``, record what passed (and any kata solved in the session), report; 0 when all passed.

    ``end_session`` ends the running session after this check even when it is not solved.
    """
    for kata in katas:
        _require_kata_file(root, kata)
    grading = grade_isolated(root / "katas", katas)
    at = now()
    passes = {kata: _passes(grading.results, kata) for kata in katas}
    with changing_state(root) as state:
        state.status.update({kata: "passed" if passed else "failing" for kata, passed in passes.items()})
        session = state.session if state.session is not None and set(katas) & set(state.session.katas) else None
        solved = [kata for kata in katas if session and passes[kata] and kata not in session.solved]
        if session is not None:
            session.solved.update({kata: session.seconds(at) for kata in solved})
            if session.is_solved() or end_session:
                _end(state, at)
    passed = all(passes.values()) and not grading.problem
    if as_json:
        _print_json(
            {
                "katas": katas,
                "passed": passed,
                "problem": grading.problem,
                "totals": kata_totals(grading.results),
                "results": [asdict(result) for result in grading.results],
                "session": _session_json(session, at) if session is not None else None,
                "solved": solved,
            }
        )
        return 0 if passed else 1
    _print_checks(grading.results, several=len(katas) > 1)
    if grading.problem:
        print(paint(f"problem: {grading.problem}", "yellow"))
    for line in score_table(grading.results):
        if len(katas) > 1 or not line.startswith("total"):
            print(line)
    if session is not None:
        print(paint(_time_used(session, at), "yellow" if _over(session, at) else "bold"))
        for kata in solved:
            print(paint(_solved_line(state, session, kata), "green"))
        if session.mock and session.ended is not None:
            print("\n".join(_summary(session, grading.results, at)))
    elif passed:
        print(paint(f"every check passes: lora-kata start {katas[0]} --fresh to time yourself", "green"))
    if not passed:
        print(paint(f"next: {_next_step(grading.results, katas)}", "dim"))
    return 0 if passed else 1


def _passes(results: list[CheckResult], kata: str) -> bool:
    graded = [result for result in results if result.kata == kata and result.outcome != "skipped"]
    return bool(graded) and all(result.outcome == "passed" for result in graded)


def _next_step(results: list[CheckResult], katas: list[str]) -> str:
    failed = next((result for result in results if result.outcome == "failed"), None)
    if failed is not None and failed.message.startswith("blocked: "):
        return failed.message.removeprefix("blocked: ").split(" (")[0]
    return f"fix the first FAIL above in katas/{failed.kata if failed else katas[0]}.py"


def _print_checks(results: list[CheckResult], several: bool) -> None:
    """One line per check run: PASS, or FAIL with its teaching message (skipped ones are in the score table)."""
    for result in results:
        if result.outcome == "skipped":
            continue
        name = result.check.removeprefix("test_").replace("_", " ")
        name = f"{result.kata}: {name}" if several else name
        if result.outcome == "passed":
            print(f"{paint('PASS', 'green')} {name}")
        else:
            print(f"{paint('FAIL', 'red')} {name}: {result.message}")


def _time_used(session: Session, at: float) -> str:
    """'time 12:34 of 25:00, 12:26 left' (or '... over')."""
    used, budget = session.seconds(at), session.minutes * 60
    left = f"{_clock(budget - used)} left" if used <= budget else f"{_clock(used - budget)} over"
    return f"time {_clock(used)} of {_clock(budget)}, {left}"


def _over(session: Session, at: float) -> bool:
    return session.seconds(at) > session.minutes * 60


def _solved_line(state: State, session: Session, kata: str) -> str:
    seconds = session.solved[kata]
    hints = session.hints.get(kata, 0)
    line = f"solved {kata} {'at' if session.mock else 'in'} {_clock(seconds)} with {hints} hint{'s' * (hints != 1)}"
    if kata in session.revealed:
        return line + ", solution revealed"
    earlier = _solve_times(state, kata)[:-1]
    if not session.mock and earlier and seconds < min(earlier):
        line += f": your best yet (was {_clock(min(earlier))})"
    return line


def _summary(session: Session, results: list[CheckResult], at: float) -> list[str]:
    """The end of a mock interview: the overall result, then one line per kata."""
    totals = kata_totals(results)
    used = f"{_clock(session.seconds(at))} of {_clock(session.minutes * 60)}"
    lines = [paint(f"\nmock interview over: {len(session.solved)}/{len(session.katas)} katas solved, {used}", "bold")]
    for kata in session.katas:
        when = f"solved at {_clock(session.solved[kata])}" if kata in session.solved else "not solved"
        total = totals.get(kata)
        checks = f"{total['passed']:.0f}/{total['checks']:.0f} checks" if total else ""
        hints = session.hints.get(kata, 0)
        revealed = ", solution revealed" if kata in session.revealed else ""
        lines.append(f"  {kata:<16}{when:<20}{checks:<16}{hints} hint{'s' * (hints != 1)}{revealed}")
    return lines


def _countdown(session: Session | None, katas: list[str]) -> str:
    if session is None or not set(katas) & set(session.katas):
        return f"watching {', '.join(katas)}: no clock running (lora-kata start KATA times you)"
    return f"{', '.join(session.katas)}: {_time_used(session, now())}"


# Helpers


def _kata(name: str) -> KataInfo:
    """The kata called ``name``, checked: a typo gets the nearest name."""
    return kata_info(kata_names([name])[0])


def _require_kata_file(root: Path, kata: str) -> None:
    if not (root / "katas" / f"{kata}.py").is_file():
        raise UserError(f"katas/{kata}.py is missing: lora-kata reset {kata} restores the stub")


def _session_katas(name: str | None, state: State, command: str) -> list[str]:
    """The kata named, else the running session's; a one-line error when there is neither."""
    if name:
        return [_kata(name).name]
    if state.session is None:
        example = f"lora-kata {command} {practice_katas()[0].name}"
        raise UserError(f"no session running: name a kata ({example}) or start one (lora-kata start KATA)")
    return list(state.session.katas)


def _hint_kata(name: str | None, state: State) -> str:
    """The kata named, else the session's first kata not yet solved."""
    katas = _session_katas(name, state, "hint")
    session = state.session
    unsolved = [kata for kata in katas if session is None or kata not in session.solved]
    return (unsolved or katas)[0]


def _budget(minutes: float | None, default: float) -> float:
    if minutes is None:
        return default
    if minutes <= 0:
        raise UserError(f"--minutes {minutes:g}: give a positive number of minutes")
    return minutes


def _end_running_session(state: State, yes: bool, doing: str) -> None:
    """End the running session, if any, after asking (``yes``: without asking); refusing is a UserError."""
    session = state.session
    if session is None:
        return
    what = "the mock interview" if session.mock else f"the session on {session.katas[0]}"
    running = f"{what} is running ({_clock(session.seconds(now()))} used)"
    if not _confirm(f"{running[0].upper()}{running[1:]}. End it and {doing}?", yes):
        raise UserError(f"{running}: finish it with lora-kata check, or add --yes to end it and {doing}")
    _end(state, now())
    print(paint(f"ended {what}: it is in lora-kata history", "dim"))


def _end(state: State, at: float) -> None:
    """Move the running session to the history, ended at ``at``."""
    assert state.session is not None
    state.session.ended = at
    state.history.append(state.session)
    state.session = None


def _restore(root: Path, state: State, kata: str) -> None:
    """Restore the stub of ``kata`` (backing up the learner's file) and forget its status and hints."""
    backup = restore_stub(root, kata)
    state.status.pop(kata, None)
    state.hints.pop(kata, None)
    kept = f"; your file is saved as {backup.relative_to(root)}" if backup is not None else ""
    print(f"restored the stub of katas/{kata}.py{kept}")


def _confirm(question: str, yes: bool) -> bool:
    """Whether the user agrees: ``yes`` does; a terminal is asked; anything else (scripts, CI) declines."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}
    except EOFError:
        return False


def _show_source(path: Path) -> None:
    """Print a Python file, highlighted by rich on a terminal when it is installed."""
    source = path.read_text()
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.syntax import Syntax
        except ImportError:
            pass
        else:
            Console().print(Syntax(source, "python", line_numbers=True, background_color="default"))
            return
    print(source, end="")


def _solve_times(state: State, kata: str) -> list[float]:
    """Seconds to solve ``kata`` in each of its own sessions, oldest first, without those where it was revealed."""
    return [
        session.solved[kata]
        for session in state.history
        if not session.mock and kata in session.solved and kata not in session.revealed
    ]


def _result(session: Session) -> str:
    if session.ended is None:
        result = "running"
    elif session.mock:
        result = f"{len(session.solved)}/{len(session.katas)} solved"
    else:
        result = "solved" if session.is_solved() else "not solved"
    return result + (", solution revealed" if session.revealed else "")


def _sparkline(values: list[float]) -> str:
    """One block per value, its height in proportion to the largest."""
    top = max(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(value / top * len(SPARKS)))] for value in values)


def _clock(seconds: float) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour on."""
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02}:{rest % 60:02}" if hours else f"{rest // 60}:{rest % 60:02}"


def _session_json(session: Session, at: float) -> dict[str, Any]:
    return {**asdict(session), "seconds": session.seconds(at)}


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2))
