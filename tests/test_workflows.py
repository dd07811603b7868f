"""The GitHub workflows: actionlint passes on each, and autograde.yml's own `run:` steps, run here the way a
runner runs them, grade a copy of the repository into the right job summary, annotations and exit codes."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lora_kata.cli import main
from lora_kata.github import annotation
from lora_kata.grading.implementation import GRADED, KATAS
from lora_kata.grading.results import CheckResult, gradescope, read_results, write_json
from tests.implementations import REPOSITORY, SOLUTIONS, is_stub

WORKFLOWS = REPOSITORY / ".github" / "workflows"
AUTOGRADE = WORKFLOWS / "autograde.yml"
SCRIPTS = Path(sysconfig.get_path("scripts"))
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".*_cache", ".hypothesis", ".lora-kata", "*.egg-info"
)
# What GitHub makes of the job's env expressions on a push, without and with a trusted grader (GRADER_REF).
OWN_GRADER = {"GRADER_REF": "", "GRADER_DIR": "."}
TRUSTED_GRADER = {"GRADER_REF": "v1.0", "GRADER_DIR": "trusted-grader"}
# When a step runs, given the ids of the steps that ran and whether one failed.
CONDITIONS = {
    None: lambda ran, failed: not failed,
    "${{ !cancelled() && steps.grade.outcome != 'skipped' }}": lambda ran, failed: "grade" in ran,
}
ANNOTATION = re.compile(r"::error file=katas/(\w+)\.py,line=\d+,title=(\w+)::test_\w+")


@dataclass
class Step:
    id: str
    returncode: int
    stdout: str
    outputs: dict[str, str]


@dataclass
class Job:
    steps: list[Step]
    summary: str

    @property
    def returncodes(self) -> dict[str, int]:
        return {step.id: step.returncode for step in self.steps}

    def classroom_result(self) -> dict:
        """What the report step hands GitHub Classroom's reporter."""
        report = next(step for step in self.steps if step.id == "report")
        return json.loads(base64.b64decode(report.outputs["result"]))


def test_actionlint_passes_on_every_workflow():
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert [path.name for path in workflows] == ["autograde.yml", "tests.yml"]
    assert (SCRIPTS / "actionlint").exists(), "actionlint is missing: pip install -e '.[dev]'"
    completed = subprocess.run(
        [SCRIPTS / "actionlint", "-no-color", f"-shellcheck={SCRIPTS / 'shellcheck'}", *workflows],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_autograde_passes_with_full_marks_when_every_kata_is_solved(tmp_path):
    workspace = _copy_repository(tmp_path / "workspace")
    for kata in KATAS:
        shutil.copy(SOLUTIONS / f"{kata}.py", workspace / "katas")
    (workspace / ".venv").symlink_to(SCRIPTS.parent)  # what the skipped set-up step installs: lora-kata
    job = _run_job(AUTOGRADE, workspace, OWN_GRADER)
    assert job.returncodes == {"grade": 0, "report": 0}, _log(job)
    document = json.loads((workspace / "lora-kata-results.json").read_text())
    points = f"{document['score']:g}/{document['max_score']:g}"
    assert document["score"] == document["max_score"] > 0
    assert f"## ✅ lora-kata: {points} points" in job.summary and "Failed checks" not in job.summary
    assert "<pre>kata " in job.summary and "\ntotal " in job.summary
    report = job.steps[-1].stdout
    assert "::error" not in report and f"Points {points}" in report
    classroom = job.classroom_result()
    assert classroom["status"] == "pass" and classroom["max_score"] == sum(t["score"] for t in classroom["tests"])


@pytest.mark.skipif(not all(is_stub(kata) for kata in KATAS), reason="katas/ is being solved: this needs the stubs")
def test_autograde_with_a_trusted_grader_fails_the_stubs_with_an_annotation_per_failed_check(tmp_path):
    workspace = _copy_repository(tmp_path / "workspace")  # katas/ holds the stubs
    shutil.rmtree(workspace / "grader")  # the submission's own grader plays no part
    (workspace / "trusted-grader").mkdir()  # the skipped checkout and set-up steps put the grader there
    (workspace / "trusted-grader" / ".venv").symlink_to(SCRIPTS.parent)
    job = _run_job(AUTOGRADE, workspace, TRUSTED_GRADER)
    assert job.returncodes == {"grade": 1, "report": 1}, _log(job)
    document = json.loads((workspace / "lora-kata-results.json").read_text())
    failed = [result for result in read_results(document) if result.outcome == "failed"]
    annotations = [line for line in job.steps[-1].stdout.splitlines() if line.startswith("::")]
    assert len(annotations) == len(failed) == len(document["tests"]) > 0
    assert all(ANNOTATION.match(line) for line in annotations), annotations[:3]
    assert ANNOTATION.match(annotations[0]).groups() == ("lora_linear", "lora_linear")
    assert {ANNOTATION.match(line).group(2) for line in annotations} == set(GRADED)
    assert f"## ❌ lora-kata: 0/{document['max_score']:g} points" in job.summary
    assert f"### Failed checks ({len(failed)})" in job.summary and "<code>katas/lora_linear.py:" in job.summary
    classroom = job.classroom_result()
    assert classroom["status"] == "fail" and classroom["max_score"] == document["max_score"]
    assert {test["score"] for test in classroom["tests"]} == {0}


def test_report_prints_the_failures_and_the_points_and_fails_below_full_marks(tmp_path, capsys):
    results = [
        CheckResult("lora_linear", "test_a", "passed", "", 2.0),
        CheckResult("lora_linear", "test_b", "failed", "expected 1, got 2", 1.0, "katas/lora_linear.py:3"),
    ]
    write_json(tmp_path / "results.json", gradescope(results, 1.0))
    assert main(["report", str(tmp_path / "results.json")]) == 1
    printed = capsys.readouterr().out
    assert "FAIL lora_linear::test_b: expected 1, got 2" in printed and "Points 2/3" in printed
    assert "::error" not in printed
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err


def test_an_annotation_escapes_what_github_would_read_as_syntax(tmp_path):
    result = CheckResult("lora_linear", "test_x[a,b]", "failed", "50% off\nnext line", 1.0, f"{tmp_path}/odd,name.py:7")
    assert annotation(result, tmp_path) == (
        "::error file=odd%2Cname.py,line=7,title=lora_linear::test_x[a,b]: 50%25 off%0Anext line"
    )


def test_an_annotation_outside_the_workspace_names_no_file(tmp_path):
    result = CheckResult("apply_lora", "test_y", "failed", "wrong", 1.0, "/elsewhere/apply_lora.py:3")
    assert annotation(result, tmp_path) == "::error title=apply_lora::test_y: wrong"


def _copy_repository(workspace: Path) -> Path:
    shutil.copytree(REPOSITORY, workspace, ignore=NOT_COPIED, symlinks=True)
    return workspace


def _run_job(workflow: Path, workspace: Path, expressions: dict[str, str]) -> Job:
    """Run the job's `run:` steps in ``workspace`` as a runner would, with ``expressions`` as the values of its
    env expressions; `uses:` steps and the set-up step (``id: setup``) are skipped, and each step's ``if`` is
    one of CONDITIONS."""
    (job,) = yaml.safe_load(workflow.read_text())["jobs"].values()
    assert job["defaults"]["run"]["shell"] == "bash"
    evaluated = {name for name, value in job["env"].items() if "${{" in str(value)}
    assert evaluated == set(expressions), "give the test a value for each env expression of the job"
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(workspace)), "CI": "true"}
    github = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace), "RUNNER_TEMP": str(workspace.parent)}
    steps, summary, failed = [], "", False
    for number, step in enumerate(job["steps"]):
        if "run" not in step or step.get("id") == "setup":
            continue
        assert "${{" not in step["run"] and "${{" not in str(step.get("env", {})), "keep expressions out of scripts"
        assert step.get("if") in CONDITIONS, f"teach the test the condition {step['if']!r}"
        if not CONDITIONS[step.get("if")]([done.id for done in steps], failed):
            continue
        files = {name: workspace.parent / f"step{number}-{name}" for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY")}
        for path in files.values():
            path.touch()
        environment = {**base, **job["env"], **expressions, **github, **step.get("env", {})}
        environment.update({name: str(path) for name, path in files.items()})
        completed = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace, env=environment, capture_output=True, text=True, timeout=300, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        lines = files["GITHUB_OUTPUT"].read_text().splitlines()
        outputs = dict(line.split("=", 1) for line in lines)
        steps.append(Step(step["id"], completed.returncode, completed.stdout + completed.stderr, outputs))
        summary += files["GITHUB_STEP_SUMMARY"].read_text()
        failed = failed or completed.returncode != 0
    return Job(steps, summary)


def _log(job: Job) -> str:
    return "\n".join(f"--- {step.id} (exit {step.returncode})\n{step.stdout[-3000:]}" for step in job.steps)
