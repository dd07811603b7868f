"""The `lora-kata` command (also `python -m lora_kata`): argument parsing and dispatch.

Each command is a function of one module, called with the parsed arguments: `grade` and `batch` in
``submissions``, the practice commands in ``practice``, `report` in ``github``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_kata import github, submissions
from lora_kata.arguments import positive
from lora_kata.grading.isolation import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S
from lora_kata.practice import checking, hints, mock, progress, sessions
from lora_kata.terminal import UserError

KATA_HELP = "a kata, as lora-kata list names it"

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) and return its exit code.

    A reader that goes away (``lora-kata history | head -1``) ends the command quietly, as the Python
    documentation recommends (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
    """
    try:
        try:
            return _run(argv)
        finally:
            if sys.stdout is not None:  # None: started with stdout closed
                sys.stdout.flush()  # a closed pipe shows here, and not as "Exception ignored" at exit
    except BrokenPipeError:
        _discard_output()
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        return arguments.run(arguments)
    except UserError as error:
        print(f"lora-kata: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _discard_output() -> None:
    """Point stdout and stderr at /dev/null, so that flushing them at exit raises nothing more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # no file descriptor: a test's capture
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-kata", description="LoRA katas: practise, grade, batch-grade.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _grading_commands(commands)
    _practice_commands(commands)
    _report_command(commands)
    return parser


def _grading_commands(commands: argparse._SubParsersAction) -> None:
    grade = commands.add_parser("grade", help="grade an implementation and print its score table")
    grade.add_argument("--impl", default=os.environ.get("KATA_IMPL", "katas"), help="folder or package (default katas)")
    grade.add_argument("--json", type=Path, metavar="PATH", help="write results there (Gradescope's results.json)")
    grade.add_argument("--kata", action="append", metavar="NAME", help="grade only this kata (repeatable)")
    _isolation_options(grade)
    grade.set_defaults(run=submissions.grade)

    batch = commands.add_parser("batch", help="grade every submission folder in a directory")
    batch.add_argument(
        "submissions", type=Path, metavar="SUBMISSIONS_DIR", help="one folder per submission (kata modules or katas/)"
    )
    batch.add_argument("--out", type=Path, required=True, metavar="CSV", help="the gradebook to write")
    batch.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at once (default: the CPU count)"
    )
    batch.add_argument(
        "--kata", action="append", metavar="NAME", help="grade only this kata (repeatable): the gradebook's columns"
    )
    _isolation_options(batch)
    batch.set_defaults(run=submissions.batch)


def _isolation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=positive(float),
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"wall-clock limit in seconds for grading one implementation (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--memory-mb",
        type=positive(int),
        default=DEFAULT_MEMORY_MB,
        metavar="MB",
        help=f"address-space cap of the grading process, in MiB (default {DEFAULT_MEMORY_MB})",
    )
    parser.add_argument(
        "--check-timeout",
        type=positive(float),
        metavar="S",
        help="seconds of CPU time each check may take before it fails as stuck (default: the grader's, 20)",
    )


def _practice_commands(commands: argparse._SubParsersAction) -> None:
    """list, start, check, watch, hint, solution, reset, history and mock."""
    listing = commands.add_parser("list", help="every kata: difficulty, time budget, status, best time")
    _json_option(listing)
    listing.set_defaults(run=progress.list_katas)

    start = commands.add_parser("start", help="start a timed session on a kata")
    start.add_argument("kata", metavar="KATA", help=KATA_HELP)
    start.add_argument("--minutes", type=float, metavar="N", help="time budget (default: the kata's)")
    start.add_argument("--fresh", action="store_true", help="restore the stub first (your file is backed up)")
    _yes_option(start, "end a running session without asking")
    start.set_defaults(run=sessions.start)

    check = commands.add_parser("check", help="grade a kata (default: the session's) and show the time used")
    check.add_argument("kata", nargs="?", metavar="KATA", help=f"{KATA_HELP} (default: the session's)")
    _json_option(check)
    check.set_defaults(run=checking.check)

    watch = commands.add_parser("watch", help="check on every save, with a live countdown (Ctrl-C stops)")
    watch.add_argument("kata", nargs="?", metavar="KATA", help=f"{KATA_HELP} (default: the session's)")
    watch.add_argument("--max-checks", type=int, default=0, help=argparse.SUPPRESS)  # ends it in tests
    watch.set_defaults(run=checking.watch)

    hint = commands.add_parser("hint", help="the next hint for a kata (default: the session's)")
    hint.add_argument("kata", nargs="?", metavar="KATA", help=f"{KATA_HELP} (default: the session's)")
    hint.set_defaults(run=hints.hint)

    solution = commands.add_parser("solution", help="show the reference answer (asks first during a session)")
    solution.add_argument("kata", metavar="KATA", help=KATA_HELP)
    _yes_option(solution, "reveal it during a session without asking")
    solution.set_defaults(run=hints.solution)

    reset = commands.add_parser("reset", help="restore a kata's stub (your file is backed up first)")
    reset.add_argument("kata", metavar="KATA", help=KATA_HELP)
    reset.set_defaults(run=sessions.reset)

    history = commands.add_parser("history", help="past sessions and a chart of each kata's solve times")
    _json_option(history)
    history.set_defaults(run=progress.history)

    interview = commands.add_parser(
        "mock",
        help="a mock interview: several katas under one clock",
        description=mock.MOCK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    interview.add_argument("--minutes", type=float, metavar="N", help=f"time budget (default {mock.MOCK_MINUTES:g})")
    interview.add_argument(
        "--kata", action="append", metavar="NAME", help="include this kata (repeatable; default all)"
    )
    interview.add_argument("--fresh", action="store_true", help="restore the stubs first (your files are backed up)")
    interview.add_argument("--finish", action="store_true", help="grade the running mock interview, end it, summarise")
    _yes_option(interview, "end a running session without asking")
    interview.set_defaults(run=mock.mock)


def _report_command(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="show a results JSON; --github: as a GitHub Actions run shows it")
    report.add_argument("results", type=Path, metavar="RESULTS_JSON", help="written by lora-kata grade --json")
    report.add_argument(
        "--github", action="store_true", help="annotations, job summary and GitHub Classroom's points output"
    )
    report.set_defaults(run=github.report)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead")


def _yes_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help=what)


if __name__ == "__main__":
    sys.exit(main())
