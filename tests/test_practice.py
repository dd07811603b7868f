"""`lora-kata` practice commands, driven as a learner would: sessions, checks, hints, solutions, history, mocks.

Every test works in a throwaway git working copy (LORA_KATA_ROOT) and sets the clock with
LORA_KATA_NOW, so time passes without sleeping. Grading is the slow part (a few seconds a kata), so
few tests grade; the rest run the command's entry point in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora_kata.cli import main
from lora_kata.grading.implementation import CAPSTONE, GRADED, KATAS
from lora_kata.grading.results import CheckResult, gradescope, write_json
from lora_kata.practice.metadata import DIFFICULTIES, practice_katas
from lora_kata.practice.state import Session, State, save_state
from tests.implementations import KATAS as KATAS_FOLDER
from tests.implementations import REPOSITORY, SOLUTIONS, is_stub

T0 = 1_800_000_000.0  # the clock at the start of each test's first session


def make_working_copy(folder: Path) -> Path:
    """``folder`` as a git clone with the shipped stubs committed in katas/ and the answers in solutions/."""
    (folder / "katas").mkdir(parents=True)
    (folder / "katas" / "__init__.py").write_text((KATAS_FOLDER / "__init__.py").read_text())
    for kata in KATAS:
        (folder / "katas" / f"{kata}.py").write_text(_shipped_stub(kata))
    shutil.copytree(SOLUTIONS, folder / "solutions", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "pyproject.toml").write_text('[project]\nname = "lora-kata"\n')  # what marks a working copy
    for command in (["init", "-q"], ["add", "katas"], ["commit", "-q", "-m", "stubs"]):
        subprocess.run(
            ["git", "-c", "user.name=learner", "-c", "user.email=learner@example.com", *command],
            cwd=folder, check=True, capture_output=True,
        )  # fmt: skip
    return folder


def _shipped_stub(kata: str) -> str:
    """The stub in this repository's katas/, or its committed version when a developer is solving it."""
    if is_stub(kata):
        return (KATAS_FOLDER / f"{kata}.py").read_text()
    command = ["git", "show", f"HEAD:katas/{kata}.py"]
    return subprocess.run(command, cwd=REPOSITORY, check=True, capture_output=True, text=True).stdout


def solve(root: Path, *katas: str) -> None:
    """Put the reference answers of ``katas`` into the working copy, as a learner's solution."""
    for kata in katas:
        shutil.copy(SOLUTIONS / f"{kata}.py", root / "katas" / f"{kata}.py")


def lora_kata(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own, with stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "lora_kata", *arguments],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LORA_KATA_ROOT", str(tmp_path / "copy"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    copy = make_working_copy(tmp_path / "copy")
    monkeypatch.chdir(copy)  # the commands find the working copy from the current folder first
    return copy


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """The command's entry point in this process (fast: no interpreter or torch to start): exit code, out, err."""

    def run(*arguments: str, now: float = T0) -> tuple[int, str, str]:
        monkeypatch.setenv("LORA_KATA_NOW", str(now))
        code = main(list(arguments))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def state_of(root: Path) -> dict:
    return json.loads((root / ".lora-kata" / "state.json").read_text())


def test_every_kata_has_metadata_with_three_graded_hints():
    katas = practice_katas()
    assert [info.name for info in katas] == list(GRADED), "every kata, and the capstone last"
    for info in katas:
        assert info.difficulty in DIFFICULTIES and 5 <= info.minutes <= 60 and info.title
        assert len(info.hints) == 3 and len(set(info.hints)) == 3, info.name
        assert all(dependency in KATAS for dependency in info.depends_on)


def test_list_shows_every_kata_and_suggests_the_first_to_do(root, run):
    code, out, _ = run("list")
    assert code == 0
    assert out.splitlines()[0] == f"working copy: {root} (the current folder is in it)"
    assert [line.split()[0] for line in out.splitlines()[2:-1]] == list(GRADED)
    assert "25:00  todo" in out and out.splitlines()[-1] == f"next: lora-kata start {KATAS[0]}"
    code, out, _ = run("list", "--json")
    rows = json.loads(out)
    assert [row["kata"] for row in rows] == list(GRADED)
    assert rows[0] | {"title": ""} == {
        "kata": "lora_linear", "title": "", "difficulty": "medium", "minutes": 25.0, "depends_on": [],
        "status": "todo", "best_seconds": None, "running": False,
    }  # fmt: skip


def test_a_session_is_solved_at_the_first_passing_check_with_its_time_and_hints(root, run):
    assert run("start", "lora_linear", now=T0)[0] == 0
    assert "hint 1/3" in run("hint", now=T0 + 60)[1]
    solve(root, "lora_linear")
    code, out, err = run("check", "--json", now=T0 + 600)
    document = json.loads(out)
    failed = [result for result in document["results"] if result["outcome"] == "failed"]
    assert code == 0, (failed, document["problem"], err)
    assert document["passed"] and document["solved"] == ["lora_linear"] and not document["problem"]
    assert document["session"]["solved"] == {"lora_linear": 600.0} and document["session"]["hints"] == {
        "lora_linear": 1
    }
    assert {result["outcome"] for result in document["results"]} <= {"passed", "skipped"}
    assert document["totals"]["lora_linear"]["passed"] == document["totals"]["lora_linear"]["checks"] > 0
    code, out, _ = run("history", "--json", now=T0 + 900)
    sessions = json.loads(out)["sessions"]
    assert code == 0 and len(sessions) == 1 and sessions[0]["seconds"] == 600 and json.loads(out)["running"] is None
    out = run("list")[1]
    assert "passed" in out.splitlines()[2] and "10:00" in out.splitlines()[2]
    assert sorted(p.name for p in (root / ".lora-kata").iterdir()) == ["state.json"], "a temporary file was left"


def test_watch_shows_failures_checks_again_on_a_save_and_stops_when_solved(root, run):
    run("start", "merge_weights", "--minutes", "5", now=T0)
    watch = subprocess.Popen(
        [sys.executable, "-m", "lora_kata", "watch", "--max-checks", "3"],
        env={**os.environ, "LORA_KATA_NOW": str(T0 + 90)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        first = []
        for line in watch.stdout:
            first.append(line)
            if line.startswith("waiting for a save"):
                break
        solve(root, "lora_linear", "merge_weights")
        rest, _ = watch.communicate(timeout=120)
    finally:
        watch.kill()
    first_check = "".join(first)
    assert "FAIL " in first_check and "blocked: finish lora_linear first" in first_check, first_check
    assert "time 1:30 of 5:00, 3:30 left" in first_check and "next: finish lora_linear first" in first_check
    assert watch.returncode == 0, first_check + rest
    assert "a file changed: checking again" in rest and "solved merge_weights in 1:30 with 0 hints" in rest, rest
    assert "\033[" not in first_check + rest, "colour in a pipe"


def test_mock_interview_puts_katas_under_one_clock_and_ends_with_a_summary(root, run):
    code, out, _ = run("mock", "--kata", "merge_weights", "--kata", "lora_linear", "--minutes", "30", now=T0)
    assert code == 0 and out.index("  lora_linear") < out.index("  merge_weights"), out
    assert "hint 1/3: At construction" in run("hint", now=T0 + 60)[1], "the hint is for the first unsolved kata"
    solve(root, "lora_linear", "merge_weights")
    code, out, _ = run("mock", "--finish", now=T0 + 1200)
    assert code == 0, out
    assert "mock interview over: 2/2 katas solved, 20:00 of 30:00" in out
    assert "lora_linear     solved at 20:00" in out and "1 hint" in out
    code, out, _ = run("history", now=T0 + 1300)
    assert "mock (2 katas)" in out and "2/2 solved" in out
    assert run("mock", "--finish")[0] == 2, "no mock is running any more"


CAPSTONE_KATAS = ["lora_linear", "apply_lora", "merge_weights", "masked_prompt", "gpt2_conv1d", "adapter_io",
                  "train_step"]  # fmt: skip


def test_the_capstone_is_practised_over_the_learners_katas_and_destroys_nothing(root, run):
    """The capstone has no module: start names the katas it grades, hints exist, solution points at the katas'
    reference answers, and reset and start --fresh refuse in one line, leaving every file as it was."""
    (capstone,) = [row for row in json.loads(run("list", "--json")[1]) if row["kata"] == CAPSTONE]
    assert capstone | {"title": ""} == {
        "kata": CAPSTONE, "title": "", "difficulty": "hard", "minutes": 20.0, "depends_on": CAPSTONE_KATAS,
        "status": "todo", "best_seconds": None, "running": False,
    }  # fmt: skip
    files = {path: path.read_bytes() for path in (root / "katas").iterdir()}
    completed = lora_kata("start", CAPSTONE)
    assert completed.returncode == 0, completed.stderr
    assert "started capstone (hard): 20:00 on the clock" in completed.stdout
    assert "no file of its own" in completed.stdout and ", ".join(CAPSTONE_KATAS) in completed.stdout
    assert f"note: capstone builds on {', '.join(CAPSTONE_KATAS)}, which do not pass yet" in completed.stdout
    assert state_of(root)["session"]["katas"] == [CAPSTONE]
    assert "hint 1/3: The capstone has no file of its own" in run("hint")[1]
    assert state_of(root)["session"]["hints"] == {CAPSTONE: 1}
    code, out, _ = run("solution", CAPSTONE)
    assert code == 0 and [line.split()[2:] for line in out.splitlines()[1:]] == [
        [kata, f"solutions/{kata}.py"] for kata in CAPSTONE_KATAS
    ]
    assert state_of(root)["session"]["revealed"] == [], "no answer was shown"
    for arguments, says in [
        (["reset", CAPSTONE], "lora-kata: capstone has no file of its own to reset: lora-kata reset KATA restores"),
        (["start", CAPSTONE, "--fresh", "--yes"], "lora-kata: capstone has no stub of its own to restore: start it"),
    ]:
        code, out, err = run(*arguments)
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(says), err
    assert state_of(root)["session"]["katas"] == [CAPSTONE], "the refused start ended nothing"
    (root / "katas" / "train_step.py").unlink()
    code, out, err = run("check")
    assert code == 2 and err.startswith("lora-kata: katas/train_step.py is missing: lora-kata reset train_step"), err
    (root / "katas" / "train_step.py").write_bytes(files[root / "katas" / "train_step.py"])
    assert {path: path.read_bytes() for path in (root / "katas").iterdir()} == files
    assert not (root / ".lora-kata" / "backups").exists()


def test_mock_gives_the_capstone_its_own_budget_last_and_fresh_restores_only_katas(root, run):
    code, out, _ = run("mock", "--yes")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"mock interview: {len(GRADED)} katas"), out
    assert lines[len(GRADED)].split() == [CAPSTONE, "hard", "about", "20:00", "no", "file:", "your", "katas,", "graded",
                                          "together"]  # fmt: skip
    (root / "katas" / "train_step.py").write_text("# my attempt\n")
    code, out, _ = run("mock", "--kata", CAPSTONE, "--kata", "lora_linear", "--fresh", "--yes")
    assert code == 0 and out.count("restored the stub") == 1, "the capstone has no stub to restore"
    assert (root / "katas" / "train_step.py").read_text() == "# my attempt\n"
    assert state_of(root)["session"]["katas"] == ["lora_linear", CAPSTONE]


def test_the_capstone_is_blocked_by_a_stub_then_solved_when_its_katas_work(root, run):
    """Graded for real (seconds: the capstone trains a tiny Llama): blocked on the stubs, solved once they pass."""
    run("start", CAPSTONE, now=T0)
    code, out, _ = run("check", now=T0 + 60)
    assert code == 1 and "FAIL the response loss falls: blocked: finish apply_lora first" in out, out
    assert out.splitlines()[-1] == "next: finish apply_lora first"
    solve(root, *CAPSTONE_KATAS)
    completed = lora_kata("check", "--json")  # LORA_KATA_NOW is still T0 + 60 in the environment
    document = json.loads(completed.stdout)
    assert completed.returncode == 0, [r["message"] for r in document["results"] if r["outcome"] == "failed"]
    assert document["katas"] == [CAPSTONE] and document["solved"] == [CAPSTONE]
    assert document["totals"][CAPSTONE]["passed"] == document["totals"][CAPSTONE]["checks"] == 8
    assert json.loads(run("history", "--json")[1])["sessions"][0]["solved"] == {CAPSTONE: 60.0}
    code, out, _ = run("start", CAPSTONE, now=T0 + 120)
    assert "note: capstone passes already: it counts as solved once one of its katas changes" in out
    (root / "katas" / "train_step.py").write_text((SOLUTIONS / "train_step.py").read_text() + "# changed\n")
    assert json.loads(run("check", "--json", now=T0 + 180)[1])["solved"] == [CAPSTONE], "a changed kata counts"


def test_hints_come_one_at_a_time_and_are_recorded_with_the_session(root, run):
    run("start", "apply_lora", now=T0)
    outputs = [run("hint", now=T0 + 10)[1] for _ in range(4)]
    assert "hint 1/3" in outputs[0] and "hint 2/3" not in outputs[0]
    assert "hint 1/3" in outputs[1] and "hint 2/3" in outputs[1]
    assert "that was the last hint: lora-kata solution apply_lora" in outputs[2] == outputs[3]
    assert state_of(root)["session"]["hints"] == {"apply_lora": 3}
    assert "hint 1/3" in run("hint", "merge_weights")[1], "hints of a kata outside the session count apart"
    assert state_of(root)["hints"] == {"merge_weights": 1}


def test_reset_backs_up_the_learners_file_before_restoring_the_stub(root, run):
    stub = (root / "katas" / "apply_lora.py").read_bytes()
    (root / "katas" / "apply_lora.py").write_text("# my attempt\n")
    code, out, _ = run("reset", "apply_lora")
    assert code == 0 and (root / "katas" / "apply_lora.py").read_bytes() == stub
    (backup,) = (root / ".lora-kata" / "backups").iterdir()
    assert backup.name.startswith("apply_lora-") and backup.read_text() == "# my attempt\n"
    assert f"your file is saved as .lora-kata/backups/{backup.name}" in out
    run("reset", "apply_lora")
    assert len(list((root / ".lora-kata" / "backups").iterdir())) == 1, "the stub itself needs no backup"
    (root / "katas" / "apply_lora.py").unlink()
    assert run("reset", "apply_lora")[0] == 0 and (root / "katas" / "apply_lora.py").read_bytes() == stub


def test_start_fresh_backs_up_and_restores_the_stub(root, run):
    solve(root, "lora_linear")
    code, out, _ = run("start", "lora_linear", "--fresh")
    assert code == 0 and "started lora_linear (medium): 25:00 on the clock" in out
    assert "raise NotImplementedError" in (root / "katas" / "lora_linear.py").read_text()
    (backup,) = (root / ".lora-kata" / "backups").iterdir()
    assert backup.read_text() == (SOLUTIONS / "lora_linear.py").read_text()


def test_starting_over_a_running_session_needs_yes_when_stdin_is_not_a_terminal(root, run):
    run("start", "lora_linear", now=T0)
    code, out, err = run("start", "apply_lora", now=T0 + 120)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("lora-kata: the session on lora_linear is running (2:00 used): finish it with")
    assert state_of(root)["session"]["katas"] == ["lora_linear"]
    code, out, _ = run("start", "apply_lora", "--yes", now=T0 + 180)
    assert code == 0 and "note: apply_lora builds on lora_linear, which does not pass yet" in out
    history = state_of(root)["history"]
    assert [(s["katas"], s["solved"], s["ended"] - s["started"]) for s in history] == [(["lora_linear"], {}, 180)]


def test_solution_during_a_session_is_refused_without_yes_and_recorded_with_it(root, run):
    code, out, _ = run("solution", "apply_lora")
    assert code == 0 and out == (SOLUTIONS / "apply_lora.py").read_text(), "no session: no question"
    run("start", "apply_lora")
    code, out, err = run("solution", "apply_lora")
    assert code == 1 and out == "" and err.count("\n") == 1 and "add --yes" in err
    assert state_of(root)["session"]["revealed"] == []
    code, out, _ = run("solution", "apply_lora", "--yes")
    assert code == 0 and out == (SOLUTIONS / "apply_lora.py").read_text()
    assert state_of(root)["session"]["revealed"] == ["apply_lora"]


@pytest.mark.parametrize(
    "content",
    ['{"version": 1, "session": nul', '{"version": 0, "sessions": []}', '{"version": 1, "history": 3}', "[]"],
    ids=["truncated", "old-format", "wrong-shape", "not-an-object"],
)
def test_an_unreadable_state_file_is_set_aside_with_one_warning(root, run, content):
    (root / ".lora-kata").mkdir()
    (root / ".lora-kata" / "state.json").write_text(content)
    code, out, err = run("list")
    assert code == 0 and "todo" in out
    assert err.count("\n") == 1 and err.startswith("lora-kata: warning: ") and "started afresh" in err, err
    (aside,) = (root / ".lora-kata").glob("state.json.corrupt-*")
    assert aside.read_text() == content and not (root / ".lora-kata" / "state.json").exists()
    assert run("start", "lora_linear")[0] == 0 and state_of(root)["version"] == 1


def test_history_lists_sessions_and_charts_each_katas_solve_times(root, run):
    def session(started: float, seconds: float | None, **extra) -> Session:
        solved = {"lora_linear": seconds} if seconds is not None else {}
        return Session(["lora_linear"], started, 25, solved=solved, ended=started + (seconds or 1500), **extra)

    history = [
        session(T0, 1440),
        session(T0 + 86400, None),
        session(T0 + 2 * 86400, 900, hints={"lora_linear": 2}),
        session(T0 + 3 * 86400, 60, revealed=["lora_linear"]),
        session(T0 + 4 * 86400, 585),
    ]
    save_state(root, State(history=history))
    code, out, _ = run("history", now=T0 + 5 * 86400)
    assert code == 0
    rows = out.splitlines()[1:6]
    assert [row.split()[-1] for row in rows] == ["solved", "solved", "solved", "revealed", "solved"]
    assert "not solved" in rows[1] and rows[2].split()[3:6] == ["15:00", "25:00", "2"]
    chart = next(line for line in out.splitlines() if line.startswith("lora_linear") and "->" in line)
    assert chart.split()[1] == "█▆▄" and chart.endswith("24:00 -> 9:45, best 9:45"), chart
    assert "9:45" in run("list")[1].splitlines()[2]
    assert [s["seconds"] for s in json.loads(run("history", "--json")[1])["sessions"]] == [1440, 1500, 900, 60, 585]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["start", "lora_lineer"], "lora-kata: unknown kata 'lora_lineer': did you mean lora_linear?"),
        (["hint", "merge_weigths"], "lora-kata: unknown kata 'merge_weigths': did you mean merge_weights?"),
        (["check"], "lora-kata: no session running: name a kata (lora-kata check lora_linear) or start one"),
        (["check", "apply_lora"], "lora-kata: katas/apply_lora.py is missing: lora-kata reset apply_lora restores"),
        (["mock", "--finish"], "lora-kata: no mock interview running: start one with lora-kata mock"),
        (["start", "lora_linear", "--minutes", "0"], "lora-kata: --minutes 0: give a positive number of minutes"),
    ],
    ids=["typo", "hint-typo", "no-session", "missing-file", "no-mock", "no-minutes"],
)
def test_mistakes_are_one_line_with_what_to_do_and_exit_code_2(root, run, arguments, message):
    (root / "katas" / "apply_lora.py").unlink()
    code, out, err = run(*arguments)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(message), err


def test_the_real_command_reports_a_typo_in_one_line(root):
    completed = lora_kata("start", "merge_weight")
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == "lora-kata: unknown kata 'merge_weight': did you mean merge_weights?\n"


def test_reset_outside_a_git_clone_is_one_line_error(tmp_path, monkeypatch, run):
    (tmp_path / "katas").mkdir()
    monkeypatch.setenv("LORA_KATA_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, _, err = run("reset", "lora_linear")
    assert code == 2 and err.count("\n") == 1 and "is not a git clone" in err


def test_mock_fresh_backs_up_every_learners_file_before_restoring_the_stubs(root, run):
    solve(root, "lora_linear")
    (root / "katas" / "apply_lora.py").write_text("# my attempt\n")
    code, out, _ = run("mock", "--kata", "apply_lora", "--kata", "lora_linear", "--fresh")
    assert code == 0 and out.count("your file is saved as .lora-kata/backups/") == 2, out
    backups = {path.name.partition("-")[0]: path.read_text() for path in (root / ".lora-kata" / "backups").iterdir()}
    assert backups == {"lora_linear": (SOLUTIONS / "lora_linear.py").read_text(), "apply_lora": "# my attempt\n"}
    assert all("raise NotImplementedError" in (root / "katas" / f"{kata}.py").read_text() for kata in backups)


def test_a_state_folder_that_cannot_be_used_is_one_line_error_and_loses_nothing(root, run):
    (root / ".lora-kata" / "state.json").mkdir(parents=True)
    code, out, err = run("list")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("lora-kata: cannot read ") and "move it away to start afresh" in err, err
    shutil.rmtree(root / ".lora-kata")
    (root / ".lora-kata").write_text("")  # a file where the state folder should be
    code, out, err = run("start", "lora_linear")
    assert code == 2 and out == "" and err.count("\n") == 1 and "must be a folder you can write in" in err, err
    (root / "katas" / "apply_lora.py").write_text("# my attempt\n")
    code, out, err = run("reset", "apply_lora")
    assert code == 2 and out == "" and err.count("\n") == 1 and "so it was left as it was" in err, err
    assert (root / "katas" / "apply_lora.py").read_text() == "# my attempt\n"


def test_commands_that_do_not_grade_start_without_importing_torch(root, tmp_path):
    """torch takes seconds to import: list, hint, history, report and --help must not pay for it."""
    results = tmp_path / "results.json"
    write_json(results, gradescope([CheckResult("lora_linear", "test_init", "passed", "", 1.0)], 0.1))
    commands = ["list", "hint lora_linear", "history", "--help", f"report {results}"]
    harness = (
        "import sys\nfrom lora_kata.cli import main\nfor command in sys.argv[1:]:\n"
        "    try:\n        main(command.split())\n    except SystemExit:\n        pass\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", harness, *commands],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert completed.returncode == 0 and completed.stderr == "", completed.stderr
    assert "Points 1/1" in completed.stdout and "usage: lora-kata" in completed.stdout, "a command did not run"
    assert completed.stdout.splitlines()[-1] == "torch imported: False"


@pytest.mark.parametrize(
    "arguments, code",
    [(["history"], 141), (["list"], 141), (["--help"], 0)],  # argparse itself ignores a failed write of the help
)
def test_a_reader_that_goes_away_ends_the_command_quietly(root, arguments, code):
    """As in `lora-kata history | head -1`, with the reader gone before the first write: no traceback, exit 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "lora_kata", *arguments],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert completed.returncode == code and completed.stderr == "", completed.stderr
