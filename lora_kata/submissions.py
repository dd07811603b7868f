"""`grade` and `batch`: grading submissions in capped child processes, with a score table, Gradescope's
results JSON and, for a folder of submissions, a gradebook CSV."""

from __future__ import annotations

import argparse
import csv
import re
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lora_kata.arguments import kata_names, writable
from lora_kata.grading.implementation import KATAS, ImplementationNotFound, locate
from lora_kata.grading.isolation import Grading, Launch, grade_isolated
from lora_kata.grading.results import gradescope, kata_totals, score_table, write_json
from lora_kata.grading.server import preloaded
from lora_kata.terminal import UserError, paint


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
    out = writable(arguments.out, "--out")
    results_dir = out.with_name(f"{out.stem}-results")
    results_dir.mkdir(exist_ok=True)
    rows: dict[str, dict[str, str]] = {}
    with preloaded() as launch, ThreadPoolExecutor(max_workers=arguments.jobs) as pool:
        limits = arguments.timeout, arguments.memory_mb, launch
        futures = {pool.submit(_grade_submission, s, *limits): s for s in submissions}
        for done, future in enumerate(as_completed(futures), start=1):
            submission = futures[future]
            grading, note = future.result()
            totals = kata_totals(grading.results)
            rows[submission.name] = {kata: f"{totals[kata]['score']:g}" if kata in totals else "0" for kata in KATAS}
            rows[submission.name]["total"] = f"{sum(t['score'] for t in totals.values()):g}"
            notes = tuple(n for n in (note, grading.problem and f"problem: {grading.problem}") if n)
            write_json(
                results_dir / f"{_safe_name(submission.name)}.json", gradescope(grading.results, grading.seconds, notes)
            )
            _progress(done, len(submissions), submission.name, rows[submission.name]["total"], notes)
    with out.open("w", newline="") as gradebook:
        writer = csv.DictWriter(gradebook, fieldnames=["submission", *KATAS, "total"])
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow({"submission": name, **rows[name]})
    print(f"wrote {out} ({len(rows)} submissions) and one results JSON each in {results_dir}", file=sys.stderr)
    return 0


def _grade_submission(submission: Path, timeout_s: float, memory_mb: int, launch: Launch | None) -> tuple[Grading, str]:
    try:
        folder = locate(submission)
    except ImplementationNotFound:
        return Grading([], 0.0, ""), f"no kata modules found in {submission}"
    return grade_isolated(folder, (), timeout_s, memory_mb, launch), ""


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _progress(done: int, total: int, name: str, score: str, notes: tuple[str, ...]) -> None:
    if sys.stderr.isatty():
        bar = "#" * (30 * done // total)
        print(f"\r[{bar:<30}] {done}/{total} graded", end="\n" if done == total else "", file=sys.stderr, flush=True)
    else:
        print(f"graded {done}/{total}: {name}: {score} points" + "".join(f"; {n}" for n in notes), file=sys.stderr)
