"""Reliability as a new user and a hostile submission meet it (issue 14): no hang, no traceback, nothing lost.

Each test drives the real command in a process of its own: `python -m pytest grader/...` or `python -m lora_kata`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora_kata.grading.time_limit import WALL_FACTOR
from tests.implementations import REPOSITORY, SOLUTIONS

LOOP = "\nwhile True:  # an endless loop at import\n    pass\n"


def command(*arguments: str, timeout: float = 120, cwd: Path = REPOSITORY, **kwargs) -> subprocess.CompletedProcess:
    """``python ARGUMENTS`` in a process of its own, stdin not a terminal; a hang fails the test at ``timeout``."""
    environment = {**os.environ, **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, *arguments],
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL, cwd=cwd,
        env=environment, **kwargs,
    )  # fmt: skip


def submission(folder: Path, **sources: str) -> Path:
    """The reference answers in ``folder``, with the modules named in ``sources`` appended to."""
    folder.mkdir(parents=True)
    for module in SOLUTIONS.glob("*.py"):
        shutil.copy(module, folder / module.name)
    for kata, source in sources.items():
        (folder / f"{kata}.py").write_text((folder / f"{kata}.py").read_text() + source)
    return folder


# --- 1: a kata module that loops at import ---------------------------------------------------------------


def test_plain_pytest_fails_every_check_of_a_kata_that_loops_at_import_within_its_time_limit(tmp_path):
    """apply_lora and merge_weights import lora_linear, which loops; merge_weights loops too: every check fails
    with one line, the whole run takes about one time limit per looping module, and the header gives that limit."""
    looping = submission(tmp_path / "loop", lora_linear=LOOP, merge_weights=LOOP)
    run = command(
        "-m", "pytest", "grader/test_apply_lora.py", "grader/test_merge_weights.py", f"--impl={looping}",
        "--check-timeout", "3", "-p", "no:cacheprovider", timeout=90,
    )  # fmt: skip
    assert "timeout: 3.0s" in run.stdout, run.stdout[:600]
    assert "timeout: 300" not in run.stdout
    assert " passed" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
    assert "an endless loop at import?" in run.stdout
    assert "Traceback" not in run.stdout
    assert "blocked: fix lora_linear.py first" in run.stdout


# --- 2: a state file that is not UTF-8, nested too deep, or holds numbers no clock can be -----------------


def _state_with_a_session_started_at(started: str) -> bytes:
    session = f'{{"katas": ["lora_linear"], "started": {started}, "minutes": 30, "ended": 1800000060}}'
    return f'{{"version": 1, "session": null, "status": {{}}, "hints": {{}}, "history": [{session}]}}'.encode()


HOSTILE_STATES = {
    "not-utf-8": b"\xff\xfe garbage",
    "nested-100k-deep": b"[" * 100_000 + b"]" * 100_000,
    "started-1e400": _state_with_a_session_started_at("1e400"),
    "started-nan": _state_with_a_session_started_at("NaN"),
    "started-10e300": _state_with_a_session_started_at("1" + "0" * 300),
}


@pytest.fixture
def working_copy(tmp_path: Path) -> Path:
    from tests.test_practice import make_working_copy

    return make_working_copy(tmp_path / "copy")


@pytest.mark.parametrize("practice", ["list", "history", "check"])
@pytest.mark.parametrize("content", HOSTILE_STATES.values(), ids=HOSTILE_STATES.keys())
def test_a_hostile_state_file_is_set_aside_with_one_warning_never_a_traceback(working_copy, content, practice):
    state = working_copy / ".lora-kata" / "state.json"
    state.parent.mkdir()
    state.write_bytes(content)
    arguments = [practice, "merge_weights"] if practice == "check" else [practice]
    run = command("-m", "lora_kata", *arguments, env={"LORA_KATA_ROOT": str(working_copy)}, cwd=working_copy)
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.returncode == (1 if practice == "check" else 0), run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("lora-kata: warning: ")]
    assert len(warnings) == 1 and "started afresh" in warnings[0], run.stderr
    (aside,) = state.parent.glob("state.json.corrupt-*")
    assert aside.read_bytes() == content


# --- 5: output paths are checked before grading, and what a grading computed is never lost ----------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["grade", "--kata", "merge_weights", "--json", "/proc/x.json"], "--json /proc/x.json: cannot write in /proc"),
        (["batch", "tests/right_answers", "--out", "/proc/x.csv"], "--out /proc/x.csv: cannot write in /proc"),
        (["batch", "tests/right_answers", "--out", "{tmp}/grades.csv"], "JSONs go, is a file"),
    ],
    ids=["json-in-proc", "out-in-proc", "results-folder-is-a-file"],
)
def test_an_output_path_that_cannot_be_written_is_one_line_before_any_grading(tmp_path, arguments, message):
    (tmp_path / "grades-results").write_text("not a folder")
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    run = command("-m", "lora_kata", *arguments, timeout=30)
    assert run.returncode == 2 and run.stdout == "", run.stdout
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr


def test_results_whose_folder_the_submission_removed_are_written_elsewhere_and_named(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    removes = f"\nimport shutil\nshutil.rmtree({str(output)!r}, ignore_errors=True)\n"
    hostile = submission(tmp_path / "hostile", merge_weights=removes)
    json_path = str(output / "r.json")
    run = command("-m", "lora_kata", "grade", "--impl", str(hostile), "--kata", "merge_weights", "--json", json_path)
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    (line,) = [line for line in run.stderr.splitlines() if "cannot write" in line]
    kept = Path(line.split(": wrote ")[1].removesuffix(" instead"))
    assert json.loads(kept.read_text())["score"] > 0
    kept.unlink()


# --- 6: a closed stdout ------------------------------------------------------------------------------------


def closed_stdout(working_copy: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``lora-kata ARGUMENTS >&-``: started with stdout closed, as a shell does it."""
    line = " ".join([sys.executable, "-m", "lora_kata", *arguments]) + " >&-"
    environment = {**os.environ, "LORA_KATA_ROOT": str(working_copy)}
    return subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=120, env=environment, cwd=working_copy,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        (["list"], 0),
        (["history"], 0),
        (["check", "merge_weights"], 1),
        (["grade", "--kata", "merge_weights", "--impl", "solutions"], 0),
    ],
    ids=["list", "history", "check", "grade"],
)
def test_a_closed_stdout_is_no_traceback(working_copy, arguments, code):
    run = closed_stdout(working_copy, *arguments)
    assert "Traceback" not in run.stderr and "Error" not in run.stderr, run.stderr[-2000:]
    assert run.returncode == code, run.stderr


@pytest.mark.parametrize("arguments", [["hint", "merge_weights"], ["solution", "merge_weights", "--yes"]])
def test_a_hint_or_solution_that_cannot_be_shown_is_not_recorded(working_copy, arguments):
    assert command("-m", "lora_kata", "start", "merge_weights", cwd=working_copy).returncode == 0
    run = closed_stdout(working_copy, *arguments)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and "stdout is closed" in run.stderr and "not shown, nor recorded" in run.stderr
    session = json.loads((working_copy / ".lora-kata" / "state.json").read_text())["session"]
    assert session["hints"] == {} and session["revealed"] == []


# --- 3: a grading cut short keeps the maximum score of every other grading ---------------------------------

EXIT_IN_FORWARD = (
    "\nimport os as _os\n\n\ndef _exit(self, *args, **kwargs):\n    _os._exit(0)\n\n\nLoRALinear.forward = _exit\n"
)


def graded_json(tmp_path: Path, implementation: Path, name: str) -> dict:
    path = tmp_path / f"{name}.json"
    run = command(
        "-m", "lora_kata", "grade", "--impl", str(implementation), "--kata", "lora_linear", "--json", str(path)
    )
    assert path.exists(), run.stderr[-2000:]
    return json.loads(path.read_text())


def test_a_grading_cut_short_counts_the_same_checks_as_any_other(tmp_path):
    reference = graded_json(tmp_path, SOLUTIONS, "reference")
    crashed = graded_json(tmp_path, submission(tmp_path / "crash", lora_linear=EXIT_IN_FORWARD), "crashed")
    assert "os._exit" in crashed["output"]
    assert crashed["max_score"] == reference["max_score"] and crashed["score"] < reference["score"]
    assert [test["name"] for test in crashed["tests"]] == [test["name"] for test in reference["tests"]]
    skipped = [r["check"] for r in crashed["lora_kata"]["results"] if r["outcome"] == "skipped"]
    assert skipped == [r["check"] for r in reference["lora_kata"]["results"] if r["outcome"] == "skipped"]


@pytest.fixture(scope="module")
def batch_on_a_terminal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`lora-kata batch` with stderr on a terminal (a pty), over a submission that exits at import and one that
    holds no kata module: the results folder, and what the terminal showed."""
    folder = tmp_path_factory.mktemp("batch")
    submissions = folder / "submissions"
    (submissions / "nothing").mkdir(parents=True)
    (submissions / "exits").mkdir()
    # A kata no other kata imports: one crash, one fresh grading after it (lora_linear's would crash five).
    (submissions / "exits" / "multi_adapter.py").write_text("import os\nos._exit(0)\n")
    arguments = ["-m", "lora_kata", "batch", str(submissions), "--out", str(folder / "grades.csv"), "--jobs", "1"]
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, *arguments], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
        cwd=REPOSITORY, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the command has closed the terminal
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    assert process.wait(timeout=300) == 0, shown.decode(errors="replace")[-2000:]
    return folder / "grades-results", shown.decode(errors="replace")


def test_batch_gives_every_submission_the_same_maximum_score(batch_on_a_terminal):
    results, _ = batch_on_a_terminal
    documents = [json.loads(path.read_text()) for path in sorted(results.glob("*.json"))]
    assert len(documents) == 2 and documents[0]["max_score"] == documents[1]["max_score"] > 200
    assert [t["name"] for t in documents[0]["tests"]] == [t["name"] for t in documents[1]["tests"]]


# --- 9: which working copy ---------------------------------------------------------------------------------


def test_the_working_copy_is_found_from_the_current_folder_upward_then_lora_kata_root(working_copy, tmp_path):
    """Standing in a clone (or any folder inside it) acts on that clone, not the one lora-kata runs from nor
    LORA_KATA_ROOT; elsewhere LORA_KATA_ROOT; with neither, the copy lora-kata runs from. `list` says which."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    inside = working_copy / "katas"
    run = command("-m", "lora_kata", "start", "merge_weights", cwd=inside, env={"LORA_KATA_ROOT": str(other)})
    assert run.returncode == 0, run.stderr
    assert json.loads((working_copy / ".lora-kata" / "state.json").read_text())["session"]["katas"] == ["merge_weights"]
    listed = command("-m", "lora_kata", "list", cwd=inside, env={"LORA_KATA_ROOT": str(other)})
    assert listed.stdout.splitlines()[0] == f"working copy: {working_copy} (the current folder is in it)"
    assert "(session running)" in listed.stdout
    by_variable = command("-m", "lora_kata", "list", cwd=other, env={"LORA_KATA_ROOT": str(working_copy)})
    assert by_variable.stdout.splitlines()[0] == f"working copy: {working_copy} (LORA_KATA_ROOT)"
    environment = {key: value for key, value in os.environ.items() if key != "LORA_KATA_ROOT"}
    installed = subprocess.run(
        [sys.executable, "-m", "lora_kata", "list"], capture_output=True, text=True, timeout=60, cwd=other,
        env=environment, check=False,
    )  # fmt: skip
    assert installed.stdout.splitlines()[0] == f"working copy: {REPOSITORY} (the copy lora-kata runs from)"


# --- 8: the smaller ones -------------------------------------------------------------------------------------


def test_batch_on_a_terminal_names_each_submission_with_a_problem_as_it_happens(batch_on_a_terminal):
    _, shown = batch_on_a_terminal
    lines = [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in shown.splitlines()]
    assert any(line.startswith("exits: 0 points; problem: multi_adapter: ") for line in lines), shown
    assert any(line.startswith("nothing: 0 points; no kata modules found in ") for line in lines), shown
    assert "[##############################] 2/2 graded" in shown


def test_a_kata_that_passed_before_the_mock_is_solved_in_it_only_once_changed(working_copy):
    def lora_kata(*arguments: str) -> subprocess.CompletedProcess:
        return command("-m", "lora_kata", *arguments, cwd=working_copy, timeout=200)

    shutil.copy(SOLUTIONS / "lora_linear.py", working_copy / "katas" / "lora_linear.py")
    assert lora_kata("check", "lora_linear").returncode == 0
    assert "count as solved only once changed" in lora_kata("mock", "--kata", "lora_linear").stdout
    unchanged = lora_kata("check")
    assert unchanged.returncode == 0 and "solved lora_linear" not in unchanged.stdout, unchanged.stdout[-1500:]
    state = working_copy / ".lora-kata" / "state.json"
    assert json.loads(state.read_text())["session"]["solved"] == {}
    with (working_copy / "katas" / "lora_linear.py").open("a") as solution:
        solution.write("# solved again, in the mock\n")
    changed = lora_kata("check")
    assert "solved lora_linear at " in changed.stdout and "1/1 katas solved" in changed.stdout, changed.stdout[-1500:]


def test_check_and_grade_name_a_checks_cases_alike(working_copy):
    checked = command("-m", "lora_kata", "check", "apply_lora", cwd=working_copy).stdout
    graded = command("-m", "lora_kata", "grade", "--kata", "apply_lora", cwd=working_copy).stdout
    cases = [set(re.findall(r"\[[^\]]+\]", output.split("\nkata ")[0])) for output in (checked, graded)]
    assert "[q_proj+v_proj]" in cases[1] and cases[0] == cases[1], (checked, graded)


def test_grade_takes_the_check_timeout(tmp_path):
    """The limit counts CPU seconds (a loaded machine does not change a grade); a check that only waits fails at
    WALL_FACTOR times the limit on the clock. Each way is taken once here: the first merge computes for 30 s of
    CPU time, the second sleeps for 60 s."""
    slow = """
import time as _time

_merge = merge_weights
_calls = []


def merge_weights(model):
    _calls.append(model)
    if len(_calls) == 1:
        started = _time.process_time()
        while _time.process_time() - started < 30:
            pass
    if len(_calls) == 2:
        _time.sleep(60)
    return _merge(model)
"""
    folder = submission(tmp_path / "slow", merge_weights=slow)
    arguments = ["grade", "--impl", str(folder), "--kata", "merge_weights", "--check-timeout", "1"]
    run = command("-m", "lora_kata", *arguments, timeout=200)
    assert run.returncode == 1, (run.stdout[-1500:], run.stderr)
    assert "timed out after 1 s of CPU time" in run.stdout, run.stdout[-1500:]
    assert f"timed out after {WALL_FACTOR} s of waiting (wall clock)" in run.stdout, run.stdout[-1500:]


@pytest.mark.parametrize(
    "arguments",
    [
        ["-m", "lora_kata", "grade", "--impl", "solutions/lora_linear.py"],
        ["-m", "pytest", "grader/test_lora_linear.py", "--impl", "solutions/lora_linear.py"],
    ],
    ids=["grade", "pytest"],
)
def test_impl_at_a_file_says_it_is_a_file(arguments):
    run = command(*arguments, timeout=60)
    assert run.returncode in (2, 4), run.stdout + run.stderr
    assert "solutions/lora_linear.py is a file, not a folder: point --impl at the folder" in run.stdout + run.stderr
