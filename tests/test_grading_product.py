"""`lora-kata grade` and `batch`: scores, Gradescope JSON, one-line errors, isolation of hostile code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from lora_kata.grading.isolation import grade_isolated
from lora_kata.grading.results import CheckResult, score_table
from tests.implementations import REPOSITORY, SOLUTIONS, implementation_folder, reference_results


def lora_kata(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lora_kata", *arguments],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def kata_outcomes(results) -> dict[str, set[str]]:
    outcomes: dict[str, set[str]] = {}
    for result in results:
        outcomes.setdefault(result.kata, set()).add(result.outcome)
    return outcomes


@pytest.mark.xdist_group("reference")  # the reference's grading, shared with test_right_answers on one worker
def test_every_check_carries_points():
    unpointed = [result.check for result in reference_results() if result.points <= 0]
    assert not unpointed, f"checks without a points marker: {unpointed}"


def test_grade_prints_the_score_table_and_writes_gradescope_json(tmp_path):
    wrong = (SOLUTIONS / "lora_linear.py").read_text().replace("self.scaling = alpha / r", "self.scaling = alpha")
    folder = implementation_folder(tmp_path / "sub", {"lora_linear": wrong})
    rows = ["--kata", "lora_linear", "--kata", "merge_weights"]
    completed = lora_kata("grade", "--impl", str(folder), "--json", str(tmp_path / "results.json"), *rows)
    assert completed.returncode == 1, completed.stderr
    assert "FAIL lora_linear::test_records_r_alpha_and_scaling: expected scaling = alpha / r" in completed.stdout
    assert any(line.startswith("total ") for line in completed.stdout.splitlines()[-4:]), completed.stdout
    document = json.loads((tmp_path / "results.json").read_text())
    assert {"score", "max_score", "execution_time", "output", "tests"} <= document.keys()
    assert 0 < document["score"] < document["max_score"] == sum(test["max_score"] for test in document["tests"])
    failed = [test for test in document["tests"] if test["status"] == "failed"]
    assert failed and all(test["score"] == 0 and test["output"] for test in failed)
    assert {"name", "number", "score", "max_score", "status", "output", "tags", "visibility"} <= failed[0].keys()


def test_grade_exits_zero_only_when_everything_passes():
    completed = lora_kata("grade", "--impl", "solutions", "--kata", "merge_weights")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "merge_weights" in completed.stdout and "lora_linear " not in completed.stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["grade", "--impl", "no/such/folder"], "lora-kata: --impl no/such/folder: no such folder"),
        (["grade", "--kata", "lora_lineer"], "lora-kata: unknown kata 'lora_lineer': did you mean lora_linear?"),
        (
            ["grade", "--json", "no/such/folder/results.json"],
            "lora-kata: --json no/such/folder/results.json: the folder",
        ),
        (["batch", "no/such/folder", "--out", "grades.csv"], "lora-kata: no/such/folder is not a folder"),
    ],
    ids=["missing-impl", "kata-typo", "unwritable-json", "missing-submissions"],
)
def test_bad_input_is_one_error_line_and_exit_code_2(arguments, message):
    completed = lora_kata(*arguments, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and completed.stderr.startswith(message), completed.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["grade", "--timeout", "-1"], "argument --timeout: '-1' is not a number above 0"),
        (
            ["batch", "subs", "--out", "g.csv", "--memory-mb", "0"],
            "argument --memory-mb: '0' is not a whole number above 0",
        ),
    ],
    ids=["negative-timeout", "zero-memory"],
)
def test_limits_must_be_above_zero(arguments, message):
    completed = lora_kata(*arguments, timeout=60)
    assert completed.returncode == 2 and completed.stderr.strip().splitlines()[-1].endswith(message), completed.stderr


def test_batch_refuses_an_empty_submissions_folder(tmp_path):
    completed = lora_kata("batch", str(tmp_path), "--out", str(tmp_path / "grades.csv"), timeout=60)
    assert completed.returncode == 2 and "holds no submission folders" in completed.stderr


@pytest.mark.parametrize(
    "source, problem",
    [
        ("import os\nos._exit(0)\n", "does the submission call os._exit"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "killed by SIGSEGV"),
    ],
    ids=["os._exit", "segfault"],
)
def test_a_kata_that_kills_the_grader_costs_only_its_own_points(tmp_path, source, problem):
    # The rows before and after the kata that kills its grading process, graded in that order.
    katas = ["lora_linear", "apply_lora", "merge_weights"]
    grading = grade_isolated(implementation_folder(tmp_path / "sub", {"apply_lora": source}), katas)
    assert problem in grading.problem and grading.problem.startswith("apply_lora: ")
    outcomes = kata_outcomes(grading.results)
    assert outcomes["apply_lora"] == {"failed", "skipped"} or outcomes["apply_lora"] == {"failed"}
    assert outcomes["lora_linear"] == outcomes["merge_weights"] == {"passed", "skipped"}


def test_a_hang_is_stopped_at_the_time_limit(tmp_path):
    # merge_weights's checks take about a second alone; the limit leaves room for a machine loaded several times
    # over, and each check's own limit is above it, so that the grading's limit is what stops the hang (which
    # burns a core until then: the limit is kept short).
    grading = grade_isolated(
        implementation_folder(tmp_path / "sub", {"masked_prompt": "while True:\n    pass\n"}),
        ["merge_weights", "masked_prompt"],
        timeout_s=20,
        check_timeout_s=120,
    )
    assert "took longer than 20 s" in grading.problem and grading.seconds < 40
    assert kata_outcomes(grading.results)["merge_weights"] == {"passed", "skipped"}
    assert "failed" in kata_outcomes(grading.results)["masked_prompt"]


def test_a_huge_allocation_fails_its_kata_under_the_memory_cap(tmp_path):
    source = "import torch\nHUGE = torch.ones(50 * 2**30, dtype=torch.uint8)\n"
    folder = implementation_folder(tmp_path / "sub", {"merge_weights": source})
    grading = grade_isolated(folder, ["merge_weights", "masked_prompt"], memory_mb=4096)
    messages = {
        result.message for result in grading.results if result.kata == "merge_weights" and result.outcome == "failed"
    }
    assert messages and all("could not be imported" in message for message in messages)


def test_batch_writes_a_gradebook_and_leaves_no_process_behind(tmp_path):
    submissions = tmp_path / "submissions"
    implementation_folder(submissions / "alice")
    implementation_folder(submissions / "bob", {"apply_lora": "import os\nos._exit(0)\n"})
    implementation_folder(submissions / "carol" / "katas")
    (submissions / "dave").mkdir()
    (submissions / "eve").mkdir()
    mark = f"300.{os.getpid()}"  # this test's own sleep: another run's cannot be taken for one left behind here
    (submissions / "eve" / "merge_weights.py").write_text(f"import subprocess\nsubprocess.Popen(['sleep', '{mark}'])\n")
    katas = ["lora_linear", "apply_lora", "merge_weights"]  # bob kills the grading in the middle one
    arguments = ["--out", str(tmp_path / "grades.csv"), "--jobs", "2", *(f"--kata={kata}" for kata in katas)]
    completed = lora_kata("batch", str(submissions), *arguments)
    assert completed.returncode == 0, completed.stderr
    with (tmp_path / "grades.csv").open() as gradebook:
        rows = {row["submission"]: row for row in csv.DictReader(gradebook)}
    assert list(next(iter(rows.values()))) == ["submission", *katas, "total"]
    assert rows["alice"]["total"] == rows["carol"]["total"] != "0"
    assert rows["bob"]["apply_lora"] == "0" and rows["bob"]["merge_weights"] == rows["alice"]["merge_weights"]
    assert rows["dave"]["total"] == rows["eve"]["total"] == "0"
    assert sorted(p.name for p in (tmp_path / "grades-results").iterdir()) == [f"{n}.json" for n in sorted(rows)]
    strays = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid) == f"sleep\x00{mark}\x00"]
    assert not strays, f"processes left behind: {strays}"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_pytest_junitxml_carries_each_check_its_verdict_and_points(tmp_path):
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "grader/test_apply_lora.py", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=REPOSITORY, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    cases = ElementTree.parse(report).getroot().iter("testcase")
    failures = [(case, case.find("failure")) for case in cases if case.find("failure") is not None]
    assert failures
    for case, failure in failures:
        assert failure.get("message").startswith("not implemented yet"), failure.get("message")
        points = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert float(points["points"]) > 0


def test_the_score_table_counts_each_reason_for_skipping_apart():
    results = [
        CheckResult("lora_linear", "a[cuda]", "skipped", "no CUDA device here", 1.0),
        CheckResult("lora_linear", "b[cuda]", "skipped", "no CUDA device here", 1.0),
        CheckResult("masked_prompt", "c[transformers]", "skipped", "transformers is not installed", 2.0),
        CheckResult("masked_prompt", "d", "passed", "", 2.0),
    ]
    assert score_table(results)[-2:] == [
        "(2 checks skipped: no CUDA device here)",
        "(1 check skipped: transformers is not installed)",
    ]
