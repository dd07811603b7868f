"""The `lora-kata` command (also `python -m grader`)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from grader import github
from grader.implementation import GRADED, ImplementationNotFound, locate
from grader.isolation import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, Grading, grade_isolated
from grader.results import gradescope, kata_totals, score_table, write_json
from grader.terminal import UserError, paint

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

    grade = commands.add_parser("grade", help="grade an implementation and print its score table")
    grade.add_argument("--impl", default=os.environ.get("KATA_IMPL", "katas"), help="folder or package (default katas)")
    grade.add_argument("--json", type=Path, metavar="PATH", help="write results there (Gradescope's results.json)")
    grade.add_argument("--kata", action="append", metavar="NAME", help="grade only this kata (repeatable)")
    _isolation_options(grade)
    grade.set_defaults(run=_grade)

    batch = commands.add_parser("batch", help="grade every submission folder in a directory")
    batch.add_argument(
        "submissions", type=Path, metavar="SUBMISSIONS_DIR", help="one folder per submission (kata modules or katas/)"
    )
    batch.add_argument("--out", type=Path, required=True, metavar="CSV", help="the gradebook to write")
    batch.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at once (default: the CPU count)"
    )
    _isolation_options(batch)
    batch.set_defaults(run=_batch)
    from grader import practice  # here, not at the top: practice imports this module

    practice.add_commands(commands)
    github.add_commands(commands)
    return parser


def _isolation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"wall-clock limit in seconds for grading one implementation (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--memory-mb",
        type=_positive(int),
        default=DEFAULT_MEMORY_MB,
        metavar="MB",
        help=f"address-space cap of the grading process, in MiB (default {DEFAULT_MEMORY_MB})",
    )


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'} above 0")
        return value

    return parse


def kata_names(names: Sequence[str] | None) -> list[str]:
    """The katas asked for, checked; a typo gets the nearest name."""
    for name in names or []:
        if name not in GRADED:
            nearest = difflib.get_close_matches(name, GRADED, n=1)
            hint = f": did you mean {nearest[0]}?" if nearest else f"; the katas are {', '.join(GRADED)}"
            raise UserError(f"unknown kata {name!r}{hint}")
    return list(names or [])


def writable(path: Path, what: str) -> Path:
    """``path``, after checking that a file can be written there."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name")
    if not folder.is_dir():
        raise UserError(f"{what} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{what} {path}: cannot write in {folder}")
    return path


def _folder(spec: str) -> Path:
    try:
        return locate(spec)
    except ImplementationNotFound as error:
        raise UserError(str(error)) from None


def _grade(arguments: argparse.Namespace) -> int:
    katas = kata_names(arguments.kata)
    json_path = writable(arguments.json, "--json") if arguments.json else None
    folder = _folder(arguments.impl)
    print(paint(f"grading {folder}", "dim"))
    grading = grade_isolated(folder, katas, arguments.timeout, arguments.memory_mb)
    for result in grading.results:
        if result.outcome == "failed":
            print(f"{paint('FAIL', 'red')} {result.kata}::{result.check}: {result.message}")
    if grading.problem:
        print(paint(f"problem: {grading.problem}", "yellow"))
    for line in score_table(grading.results):
        print(line)
    if json_path is not None:
        notes = (f"problem: {grading.problem}",) if grading.problem else ()
        write_json(json_path, gradescope(grading.results, grading.seconds, notes))
    graded = [result for result in grading.results if result.outcome != "skipped"]
    return 0 if graded and all(result.outcome == "passed" for result in graded) and not grading.problem else 1


def _batch(arguments: argparse.Namespace) -> int:
    if not arguments.submissions.is_dir():
        raise UserError(
            f"{arguments.submissions} is not a folder: pass the folder that holds one folder per submission"
        )
    submissions = sorted(p for p in arguments.submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not submissions:
        raise UserError(
            f"{arguments.submissions} holds no submission folders: put each submission in a folder of its own"
        )
    if arguments.jobs < 1:
        raise UserError(f"--jobs {arguments.jobs}: give at least 1")
    out = writable(arguments.out, "--out")
    results_dir = out.with_name(f"{out.stem}-results")
    results_dir.mkdir(exist_ok=True)
    rows: dict[str, dict[str, str]] = {}
    with ThreadPoolExecutor(max_workers=arguments.jobs) as pool:
        futures = {pool.submit(_grade_submission, s, arguments.timeout, arguments.memory_mb): s for s in submissions}
        for done, future in enumerate(as_completed(futures), start=1):
            submission = futures[future]
            grading, note = future.result()
            totals = kata_totals(grading.results)
            rows[submission.name] = {kata: f"{totals[kata]['score']:g}" if kata in totals else "0" for kata in GRADED}
            rows[submission.name]["total"] = f"{sum(t['score'] for t in totals.values()):g}"
            notes = tuple(n for n in (note, grading.problem and f"problem: {grading.problem}") if n)
            write_json(
                results_dir / f"{_safe_name(submission.name)}.json", gradescope(grading.results, grading.seconds, notes)
            )
            _progress(done, len(submissions), submission.name, rows[submission.name]["total"], notes)
    with out.open("w", newline="") as gradebook:
        writer = csv.DictWriter(gradebook, fieldnames=["submission", *GRADED, "total"])
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow({"submission": name, **rows[name]})
    print(f"wrote {out} ({len(rows)} submissions) and one results JSON each in {results_dir}", file=sys.stderr)
    return 0


def _grade_submission(submission: Path, timeout_s: float, memory_mb: int) -> tuple[Grading, str]:
    try:
        folder = locate(submission)
    except ImplementationNotFound:
        return Grading([], 0.0, ""), f"no kata modules found in {submission}"
    return grade_isolated(folder, (), timeout_s, memory_mb), ""


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _progress(done: int, total: int, name: str, score: str, notes: tuple[str, ...]) -> None:
    if sys.stderr.isatty():
        bar = "#" * (30 * done // total)
        print(f"\r[{bar:<30}] {done}/{total} graded", end="\n" if done == total else "", file=sys.stderr, flush=True)
    else:
        print(f"graded {done}/{total}: {name}: {score} points" + "".join(f"; {n}" for n in notes), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
