"""`lora-kata report`: a results JSON of `lora-kata grade --json`, for people and for GitHub Actions.

With ``--github`` it reports the way a workflow run shows it: an ``::error`` annotation at the file and
line of each failed check, the score table and every failed check in the job summary
($GITHUB_STEP_SUMMARY), and the step output ``result`` from which GitHub Classroom's autograding
reporter (classroom-resources/autograding-grading-reporter) takes the points.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
from pathlib import Path

from lora_kata.grading.results import CheckResult, read_results
from lora_kata.terminal import UserError, paint

FAILED_TABLE_HEADER = ("| kata | check | verdict | where |", "| --- | --- | --- | --- |")


def report(arguments: argparse.Namespace) -> int:
    """`lora-kata report`: a results JSON's failed checks and points (``--github``: as GitHub Actions shows them)."""
    document = _load(arguments.results)
    failed = [result for result in read_results(document) if result.outcome == "failed"]
    workspace = Path(os.environ.get("GITHUB_WORKSPACE") or Path.cwd())
    for result in failed:
        if arguments.github:
            print(annotation(result, workspace))
        else:
            print(f"{paint('FAIL', 'red')} {result.kata}::{result.check}: {result.message}")
    print(document["output"])
    print(f"Points {document['score']:g}/{document['max_score']:g}")
    if arguments.github:
        for note in document["lora_kata"]["notes"]:
            print(f"::error title=lora-kata::{_escape_data(note)}")
        _append(os.environ.get("GITHUB_STEP_SUMMARY"), _summary(document, failed))
        _append(os.environ.get("GITHUB_OUTPUT"), f"result={_classroom_result(document)}\n")
    return 0 if _full_marks(document) else 1


def _load(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file: write it first with lora-kata grade --json {path}") from None
    except (OSError, ValueError):
        document = None
    if not _is_results(document):
        raise UserError(f"{path} is not a results JSON written by lora-kata grade --json")
    return document


def _is_results(document: object) -> bool:
    try:
        read_results(document)
    except (KeyError, TypeError):
        return False
    return {"score", "max_score", "output", "tests"} <= document.keys() and "notes" in document["lora_kata"]


def _full_marks(document: dict) -> bool:
    """Whether the grading scored every point, with something graded and nothing gone wrong."""
    return 0 < document["max_score"] <= document["score"] and not document["lora_kata"]["notes"]


def annotation(result: CheckResult, workspace: Path) -> str:
    """The ``::error`` workflow command for a failed check: at its file and line when they lie in ``workspace``."""
    properties = {**_file_and_line(result.location, workspace), "title": result.kata}
    listed = ",".join(f"{name}={_escape_property(value)}" for name, value in properties.items())
    return f"::error {listed}::{_escape_data(f'{result.check}: {result.message}')}"


def _file_and_line(location: str, workspace: Path) -> dict[str, str]:
    """``file`` (relative to ``workspace``) and ``line`` of a "path:line" location; a relative path is
    taken from the working directory, as `lora-kata grade` wrote it. Nothing for a file outside."""
    path, _, line = location.rpartition(":")
    if not line.isdigit():
        path, line = location, ""
    if not path:
        return {}
    try:
        file = (Path.cwd() / path).resolve().relative_to(workspace.resolve())
    except ValueError:
        return {}
    return {"file": file.as_posix(), **({"line": line} if line else {})}


def _escape_data(text: str) -> str:
    """``text`` as the message of a workflow command (the escaping of GitHub's actions toolkit)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """``text`` as the value of a workflow command's property."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _summary(document: dict, failed: list[CheckResult]) -> str:
    """The job summary in Markdown: the points, the score table, each failed check with its verdict."""
    mark = "✅" if _full_marks(document) else "❌"
    lines = [
        f"## {mark} lora-kata: {document['score']:g}/{document['max_score']:g} points",
        "",
        f"<pre>{html.escape(document['output'])}</pre>",
    ]
    if failed:
        lines += ["", f"### Failed checks ({len(failed)})", "", *FAILED_TABLE_HEADER]
        lines += [
            f"| {result.kata} | <code>{_cell(result.check)}</code> | {_cell(result.message)} "
            f"| <code>{_cell(result.location)}</code> |"
            for result in failed
        ]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell: HTML escaped, pipes as entities, on one line."""
    return html.escape(text, quote=False).replace("|", "&#124;").replace("\n", "<br>")


def _classroom_result(document: dict) -> str:
    """The results in the shape GitHub Classroom's graders hand its reporter: base64 JSON, one test per check."""
    tests = [
        {"name": test["name"], "status": "pass" if test["status"] == "passed" else "fail", "score": test["score"]}
        | ({"message": test["output"]} if test["output"] else {})
        for test in document["tests"]
    ]
    result = {
        "version": 1,
        "status": "pass" if _full_marks(document) else "fail",
        "max_score": document["max_score"],
        "tests": tests,
    }
    return base64.b64encode(json.dumps(result).encode()).decode()


def _append(path: str | None, text: str) -> None:
    """Append ``text`` to the file a GitHub Actions variable names, when it is set."""
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(text)
