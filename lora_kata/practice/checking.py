"""`check` and `watch`: grade a session's katas against the clock, record what was solved and when."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from lora_kata.grading.implementation import KATAS
from lora_kata.grading.isolation import grade_isolated
from lora_kata.grading.results import CheckResult, kata_totals, score_table
from lora_kata.practice.clock import clock, over, time_used
from lora_kata.practice.progress import solve_times
from lora_kata.practice.sessions import close_session, print_json, require_kata_file, session_json, session_katas
from lora_kata.practice.state import Session, State, changing_state, file_digest, load_state, now, working_copy
from lora_kata.practice.watching import snapshot, wait_for_save
from lora_kata.terminal import paint


def check(arguments: argparse.Namespace) -> int:
    root = working_copy()
    return grade_against_the_clock(root, session_katas(arguments.kata, load_state(root), "check"), arguments.json)


def watch(arguments: argparse.Namespace) -> int:
    root = working_copy()
    katas = session_katas(arguments.kata, load_state(root), "watch")
    folder = root / "katas"
    checks = 0
    try:
        while True:
            before = snapshot(folder)
            code = grade_against_the_clock(root, katas, as_json=False)
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


def grade_against_the_clock(root: Path, katas: list[str], as_json: bool, end_session: bool = False) -> int:
    """Grade ``katas``, record what passed (and any kata solved in the session), report; 0 when all passed.

    ``end_session`` ends the running session after this check even when it is not solved.
    """
    for kata in katas:
        require_kata_file(root, kata)
    grading = grade_isolated(root / "katas", katas)
    at = now()
    passes = {kata: _passes(grading.results, kata) for kata in katas}
    with changing_state(root) as state:
        state.status.update({kata: "passed" if passed else "failing" for kata, passed in passes.items()})
        session = state.session if state.session is not None and set(katas) & set(state.session.katas) else None
        solved = [kata for kata in katas if session and passes[kata] and kata not in session.solved]
        before = session.passed_before if session else {}
        solved = [kata for kata in solved if kata not in before or before[kata] != file_digest(root, kata)]
        if session is not None:
            session.solved.update({kata: session.seconds(at) for kata in solved})
            if session.is_solved() or end_session:
                close_session(state, at)
    passed = all(passes.values()) and not grading.problem
    if as_json:
        print_json(
            {
                "katas": katas,
                "passed": passed,
                "problem": grading.problem,
                "totals": kata_totals(grading.results),
                "results": [asdict(result) for result in grading.results],
                "session": session_json(session, at) if session is not None else None,
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
        print(paint(time_used(session, at), "yellow" if over(session, at) else "bold"))
        for kata in solved:
            print(paint(_solved_line(state, session, kata), "green"))
        if session.mock and session.ended is not None:
            print("\n".join(_mock_summary(session, grading.results, at)))
    elif passed:
        own_module = katas[0] in KATAS
        again = f"lora-kata start {katas[0]} --fresh to time yourself" if own_module else "your katas work together"
        print(paint(f"every check passes: {again}", "green"))
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
    kata = failed.kata if failed else katas[0]
    if kata in KATAS:
        return f"fix the first FAIL above in katas/{kata}.py"
    where = f", starting at {failed.location}" if failed and failed.location else ""
    return f"fix the first FAIL above: {kata} runs your katas together, so the mistake is in one of them{where}"


def _print_checks(results: list[CheckResult], several: bool) -> None:
    """One line per check run: PASS, or FAIL with its teaching message (skipped ones are in the score table)."""
    for result in results:
        if result.outcome == "skipped":
            continue
        function, bracket, case = result.check.partition("[")  # the case's id as the grader names it: q_proj
        name = function.removeprefix("test_").replace("_", " ") + bracket + case
        name = f"{result.kata}: {name}" if several else name
        if result.outcome == "passed":
            print(f"{paint('PASS', 'green')} {name}")
        else:
            print(f"{paint('FAIL', 'red')} {name}: {result.message}")


def _solved_line(state: State, session: Session, kata: str) -> str:
    seconds = session.solved[kata]
    hints = session.hints.get(kata, 0)
    line = f"solved {kata} {'at' if session.mock else 'in'} {clock(seconds)} with {hints} hint{'s' * (hints != 1)}"
    if kata in session.revealed:
        return line + ", solution revealed"
    earlier = solve_times(state, kata)[:-1]
    if not session.mock and earlier and seconds < min(earlier):
        line += f": your best yet (was {clock(min(earlier))})"
    return line


def _mock_summary(session: Session, results: list[CheckResult], at: float) -> list[str]:
    """The end of a mock interview: the overall result, then one line per kata."""
    totals = kata_totals(results)
    used = f"{clock(session.seconds(at))} of {clock(session.minutes * 60)}"
    lines = [paint(f"\nmock interview over: {len(session.solved)}/{len(session.katas)} katas solved, {used}", "bold")]
    for kata in session.katas:
        when = f"solved at {clock(session.solved[kata])}" if kata in session.solved else "not solved"
        total = totals.get(kata)
        checks = f"{total['passed']:.0f}/{total['checks']:.0f} checks" if total else ""
        hints = session.hints.get(kata, 0)
        revealed = ", solution revealed" if kata in session.revealed else ""
        lines.append(f"  {kata:<16}{when:<20}{checks:<16}{hints} hint{'s' * (hints != 1)}{revealed}")
    return lines


def _countdown(session: Session | None, katas: list[str]) -> str:
    if session is None or not set(katas) & set(session.katas):
        return f"watching {', '.join(katas)}: no clock running (lora-kata start KATA times you)"
    return f"{', '.join(session.katas)}: {time_used(session, now())}"
