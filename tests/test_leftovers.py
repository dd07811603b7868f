"""A descendant the submission detaches (a new session, a double fork) is found, killed and flagged after
`lora-kata grade`, `batch` and `check`, like any other process it left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.implementations import REPOSITORY, SOLUTIONS, implementation_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper is Linux's prctl")

DETACHED = "import subprocess\nsubprocess.Popen(['sleep', '{seconds}'], start_new_session=True)\n"
DOUBLE_FORK = (
    "import os\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        os.execvp('sleep', ['sleep', '{seconds}'])\n"
    "    os._exit(0)\n"
)


def lora_kata(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lora_kata", *arguments],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def sleeping(seconds: str) -> list[int]:
    """pids of living `sleep SECONDS` processes."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if command == f"sleep\0{seconds}\0".encode() and state != "Z":
            found.append(int(pid))
    return found


@pytest.fixture
def no_strays():
    """Kill (and report) what a test left behind, so a failing test does not leak processes."""
    marks: list[str] = []
    yield marks
    time.sleep(0.2)
    left = [pid for seconds in marks for pid in sleeping(seconds)]
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"processes left behind: {left}"


def submission(folder: Path, template: str, seconds: str) -> Path:
    source = (SOLUTIONS / "lora_linear.py").read_text() + "\n" + template.format(seconds=seconds)
    return implementation_folder(folder, {"lora_linear": source})


@pytest.mark.parametrize("template", [DETACHED, DOUBLE_FORK], ids=["new-session", "double-fork"])
def test_grade_kills_and_flags_a_detached_descendant(tmp_path, template, no_strays):
    seconds = f"4242.{os.getpid()}{len(template)}"
    no_strays.append(seconds)
    folder = submission(tmp_path / "sub", template, seconds)
    completed = lora_kata("grade", "--impl", str(folder), "--kata", "lora_linear", "--json", str(tmp_path / "r.json"))
    assert not sleeping(seconds), f"sleep {seconds} survived `lora-kata grade`"
    assert f"left 1 process running after its grading ('sleep {seconds}'); killed" in completed.stdout, (
        completed.stdout + completed.stderr
    )
    assert completed.returncode == 1
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["score"] == document["max_score"] > 0  # flagged, not marked down: every check passed
    assert "killed" in document["output"]


def test_batch_kills_and_flags_detached_descendants(tmp_path, no_strays):
    detached, forked = f"4242.{os.getpid()}1", f"4242.{os.getpid()}2"
    no_strays.extend([detached, forked])
    submission(tmp_path / "subs" / "alice", DETACHED, detached)
    submission(tmp_path / "subs" / "bob", DOUBLE_FORK, forked)
    implementation_folder(tmp_path / "subs" / "carol")
    # The row whose module starts the processes: a grading of the others would only repeat the reference's.
    arguments = ["--out", str(tmp_path / "g.csv"), "--jobs", "2", "--kata", "lora_linear"]
    completed = lora_kata("batch", str(tmp_path / "subs"), *arguments)
    assert completed.returncode == 0, completed.stderr
    assert not sleeping(detached) and not sleeping(forked), "a detached process survived `lora-kata batch`"
    for name, seconds in [("alice", detached), ("bob", forked)]:
        document = json.loads((tmp_path / "g-results" / f"{name}.json").read_text())
        assert f"'sleep {seconds}'); killed" in document["output"], document["output"]
    assert "killed" not in json.loads((tmp_path / "g-results" / "carol.json").read_text())["output"]
