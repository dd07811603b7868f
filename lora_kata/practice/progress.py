"""`list` and `history`: every kata's status and best time, past sessions, and a chart of solve times."""

from __future__ import annotations

import argparse
import time

from lora_kata.practice.clock import clock
from lora_kata.practice.metadata import practice_katas
from lora_kata.practice.sessions import print_json, session_json
from lora_kata.practice.state import Session, State, find_working_copy, load_state, now, working_copy
from lora_kata.terminal import paint

SPARKS = "▁▂▃▄▅▆▇█"
STATUS_COLOURS = {"todo": "dim", "failing": "red", "passed": "green"}


def list_katas(arguments: argparse.Namespace) -> int:
    root, found = find_working_copy()
    state = load_state(root)
    rows = [
        {
            "kata": info.name,
            "title": info.title,
            "difficulty": info.difficulty,
            "minutes": info.minutes,
            "depends_on": list(info.depends_on),
            "status": state.status.get(info.name, "todo"),
            "best_seconds": min(solve_times(state, info.name), default=None),
            "running": state.session is not None and info.name in state.session.katas,
        }
        for info in practice_katas()
    ]
    if arguments.json:
        print_json(rows)
        return 0
    print(paint(f"working copy: {root} ({found})", "dim"))
    print(paint(f"{'kata':<16}{'level':<8}{'budget':>7}  {'status':<9}{'best':>7}  title", "bold"))
    for row in rows:
        status = paint(f"{row['status']:<9}", STATUS_COLOURS[row["status"]])
        best = clock(row["best_seconds"]) if row["best_seconds"] is not None else "-"
        running = paint("  (session running)", "yellow") if row["running"] else ""
        budget = clock(row["minutes"] * 60)
        print(f"{row['kata']:<16}{row['difficulty']:<8}{budget:>7}  {status}{best:>7}  {row['title']}{running}")
    todo = [row["kata"] for row in rows if row["status"] != "passed"]
    if todo:
        print(paint(f"next: lora-kata start {todo[0]}", "dim"))
    else:
        print(paint("every kata passes: time yourself again with lora-kata start KATA --fresh or mock", "dim"))
    return 0


def history(arguments: argparse.Namespace) -> int:
    state = load_state(working_copy())
    at = now()
    if arguments.json:
        running = session_json(state.session, at) if state.session is not None else None
        print_json({"sessions": [session_json(session, at) for session in state.history], "running": running})
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
        budget = clock(session.minutes * 60)
        print(f"{date:<18}{kata:<16}{clock(session.seconds(at)):>8}{budget:>8}{hints:>7}  {_result(session)}")
    charts = [(info.name, solve_times(state, info.name)) for info in practice_katas()]
    charts = [(kata, times) for kata, times in charts if times]
    if charts:
        print(paint("\nsolve times, oldest first (lower is faster; solutions revealed left out)", "bold"))
    for kata, times in charts:
        trend = f"{clock(times[0])} -> {clock(times[-1])}, best {clock(min(times))}" if len(times) > 1 else ""
        print(f"{kata:<16}{_sparkline(times[-30:]):<32}{trend or clock(times[0])}")
    return 0


def solve_times(state: State, kata: str) -> list[float]:
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
