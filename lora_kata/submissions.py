"""`grade` and `batch`: grading submissions in capped child processes, with a score table, Gradescope's
results JSON and, for a folder of submissions, a gradebook CSV."""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lora_kata.arguments import kata_names, writable, writable_folder
from lora_kata.grading.expected import complete
from lora_kata.grading.implementation import GRADED, ImplementationNotFound, locate
from lora_kata.grading.isolation import Grading, Launch, grade_isolated
from lora_kata.grading.results import gradescope, kata_totals, score_table, write_json
from lora_kata.grading.server import preloaded
from lora_kata.terminal import UserError, is_terminal, paint


def _folder(spec: str) -> Path:
    try:
        return locate(spec)
    except ImplementationNotFound as error:
        raise UserError(str(error)) from None


def grade(arguments: argparse.Namespace) -> int:
    """`lora-kata grade`: grade one implementation; 0 only when every check passed."""
    katas = kata_names(arguments.kata)
    json_path = writable(arguments.json, "--json") if arguments.json else None
    folder = _folder(arguments.impl)
    print(paint(f"grading {folder}", "dim"))
    grading = grade_isolated(folder, katas, arguments.timeout, arguments.memory_mb, arguments.check_timeout)
    for result in grading.results:
        if result.outcome == "failed":
            print(f"{paint('FAIL', 'red')} {result.kata}::{result.check}: {result.message}")
    if grading.problem:
        print(paint(f"problem: {grading.problem}", "yellow"))
    for line in score_table(grading.results):
        print(line)
    if json_path is not None:
        notes = (f"problem: {grading.problem}",) if grading.problem else ()
        document = gradescope(grading.results, grading.seconds, notes)
        _save(json_path, lambda path: write_json(path, document))
    graded = [result for result in grading.results if result.outcome != "skipped"]
    return 0 if graded and all(result.outcome == "passed" for result in graded) and not grading.problem else 1


def batch(arguments: argparse.Namespace) -> int:
    """`lora-kata batch`: grade every submission folder, write the gradebook and one results JSON each."""
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
    asked = kata_names(arguments.kata)
    katas = [kata for kata in GRADED if kata in asked] or list(GRADED)  # the gradebook's columns, in order
    out = writable(arguments.out, "--out")
    results_dir = out.with_name(f"{out.stem}-results")
    if results_dir.exists() and not results_dir.is_dir():
        where = f"{results_dir}, where the results JSONs go,"
        raise UserError(f"--out {out}: {where} is a file: move it, or use another --out")
    writable_folder(results_dir, f"--out {out}: the results folder")
    rows: dict[str, dict[str, str]] = {}
    with preloaded() as launch, ThreadPoolExecutor(max_workers=arguments.jobs) as pool:
        limits = (katas, arguments.timeout, arguments.memory_mb, arguments.check_timeout, launch)
        futures = {pool.submit(_grade_submission, s, *limits): s for s in submissions}
        for done, future in enumerate(as_completed(futures), start=1):
            submission = futures[future]
            grading, note = future.result()
            totals = kata_totals(grading.results)
            rows[submission.name] = {kata: f"{totals[kata]['score']:g}" if kata in totals else "0" for kata in katas}
            rows[submission.name]["total"] = f"{sum(t['score'] for t in totals.values()):g}"
            notes = tuple(n for n in (note, grading.problem and f"problem: {grading.problem}") if n)
            document = gradescope(grading.results, grading.seconds, notes)
            _save(results_dir / f"{_safe_name(submission.name)}.json", lambda path, d=document: write_json(path, d))
            _progress(done, len(submissions), submission.name, rows[submission.name]["total"], notes)
    _save(out, lambda path: _write_gradebook(path, katas, rows))
    print(f"wrote {out} ({len(rows)} submissions) and one results JSON each in {results_dir}", file=sys.stderr)
    return 0


def _write_gradebook(path: Path, katas: list[str], rows: dict[str, dict[str, str]]) -> None:
    with path.open("w", newline="") as gradebook:
        writer = csv.DictWriter(gradebook, fieldnames=["submission", *katas, "total"])
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow({"submission": name, **rows[name]})


def _save(path: Path, write: Callable[[Path], None]) -> None:
    """``write(path)``; should that fail after all (a full disk, a folder removed while grading), the same goes
    to a temporary file, named in one line: what a grading computed is never lost."""
    try:
        write(path)
    except OSError as error:
        handle, name = tempfile.mkstemp(prefix="lora-kata-", suffix=f"-{path.name}")
        os.close(handle)
        write(Path(name))
        print(f"lora-kata: cannot write {path} ({error.strerror}): wrote {name} instead", file=sys.stderr)


def _grade_submission(
    submission: Path,
    katas: list[str],
    timeout_s: float,
    memory_mb: int,
    check_timeout_s: float | None,
    launch: Launch | None,
) -> tuple[Grading, str]:
    try:
        folder = locate(submission)
    except ImplementationNotFound:
        note = f"no kata modules found in {submission}"
        return Grading(complete([], katas, note), 0.0, ""), note
    return grade_isolated(folder, katas, timeout_s, memory_mb, check_timeout_s, launch), ""


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _progress(done: int, total: int, name: str, score: str, notes: tuple[str, ...]) -> None:
    if is_terminal(sys.stderr):
        if notes:  # a crash, a time-out, tampering: named as it happens, on a line of its own above the bar
            line = f"{name}: {score} points" + "".join(f"; {n}" for n in notes)
            print(f"\r\033[K{paint(line, 'yellow', sys.stderr)}", file=sys.stderr)
        bar = "#" * (30 * done // total)
        print(f"\r[{bar:<30}] {done}/{total} graded", end="\n" if done == total else "", file=sys.stderr, flush=True)
    else:
        print(f"graded {done}/{total}: {name}: {score} points" + "".join(f"; {n}" for n in notes), file=sys.stderr)
