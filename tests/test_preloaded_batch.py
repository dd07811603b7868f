"""`lora-kata batch` grades in forks of a preloaded server: each submission gets exactly the grade that
`lora-kata grade` gives it alone, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lora_kata.grading.implementation import GRADED
from tests.implementations import REPOSITORY, SOLUTIONS, implementation_folder
from tests.wrong_answers import all_wrong_answers

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the preloaded server forks")

SAMPLE = 4  # wrong answers spread over the zoo: each is graded twice, over its own kata's row
HOSTILE = {
    "os-exit": {"apply_lora": "import os\nos._exit(0)\n"},
    "segfault": {"merge_weights": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"},
    "sys-exit": {"masked_prompt": "import sys\nsys.exit(0)\n"},
}


def lora_kata(*arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lora_kata", *arguments], cwd=REPOSITORY, capture_output=True, text=True,
        timeout=600, check=False, stdin=subprocess.DEVNULL, env={**os.environ, **environment},
    )  # fmt: skip


def graded(document: dict) -> tuple[list[dict], list[str]]:
    """What a grade is: every check's outcome, verdict, points and location, and the notes (problems)."""
    return document["lora_kata"]["results"], document["lora_kata"]["notes"]


@pytest.mark.timeout(900)  # nine gradings, two of them over all twelve rows: minutes on 2 cores
def test_batch_through_the_server_grades_like_grade_one_at_a_time(tmp_path):
    """The reference and the stubs over every row; the hostile submissions over the rows before, at and after the
    kata that kills its grading; wrong answers spread over the zoo, each in a batch of its own over its own kata's
    row (``--kata``: every other row of theirs is the reference, graded in full already)."""
    whole, hostile = tmp_path / "whole", tmp_path / "hostile"
    implementation_folder(whole / "reference")
    stubs = {path.stem: path.read_text() for path in (REPOSITORY / "katas").glob("*.py") if path.stem != "__init__"}
    implementation_folder(whole / "stubs", stubs)
    # Where the grading ran: its parent is the reaper, forked from the server (or a fresh worker.py). The first
    # hostile submission records it from its lora_linear, graded before the kata that kills its grading.
    record = f"open({str(tmp_path / 'parent.txt')!r}, 'wb').write(open(f'/proc/{{os.getppid()}}/cmdline', 'rb').read())"
    probe = (SOLUTIONS / "lora_linear.py").read_text() + f"\nimport os\n{record}\n"
    for name, sources in HOSTILE.items():
        implementation_folder(hostile / name, {**sources, **({"lora_linear": probe} if name == "os-exit" else {})})
    around_crashes = ["lora_linear", *{kata for sources in HOSTILE.values() for kata in sources}, "fused_lora"]
    katas = {whole: list(GRADED), hostile: [kata for kata in GRADED if kata in around_crashes]}
    zoo = all_wrong_answers()
    for number, wrong in enumerate(zoo[:: len(zoo) // SAMPLE][:SAMPLE]):
        implementation_folder(tmp_path / f"rows-{number:02d}" / f"wrong-{number:02d}", {wrong.kata: wrong.source()})
        katas[tmp_path / f"rows-{number:02d}"] = [wrong.kata]
    for submissions, graded_katas in katas.items():
        kata_options = [] if submissions == whole else [f"--kata={kata}" for kata in graded_katas]
        gradebook = tmp_path / f"{submissions.name}.csv"
        completed = lora_kata("batch", str(submissions), "--out", str(gradebook), "--jobs", "2", *kata_options)
        assert completed.returncode == 0, completed.stderr
        assert gradebook.read_text().splitlines()[0] == ",".join(["submission", *graded_katas, "total"])
    assert b"server.py" in (tmp_path / "parent.txt").read_bytes(), "batch did not grade through the preloaded server"

    def alone(folder: Path) -> dict:
        graded_as = tmp_path / f"{folder.name}.json"
        kata_options = [] if folder.parent == whole else [f"--kata={kata}" for kata in katas[folder.parent]]
        lora_kata("grade", "--impl", str(folder), "--json", str(graded_as), *kata_options)
        return json.loads(graded_as.read_text())

    folders = sorted(path for submissions in katas for path in submissions.iterdir())
    with ThreadPoolExecutor(max_workers=2) as pool:
        one_at_a_time = dict(zip(folders, pool.map(alone, folders), strict=True))
    for folder, document in one_at_a_time.items():
        batched = json.loads((tmp_path / f"{folder.parent.name}-results" / f"{folder.name}.json").read_text())
        assert graded(batched) == graded(document), f"{folder.name}: batch and grade disagree"
    assert len({json.dumps(graded(document)) for document in one_at_a_time.values()}) == len(folders)


def test_the_server_preloads_without_asking_torch_about_cuda():
    """A fork cannot use CUDA once its parent has initialised it: preloading must not even count the devices."""
    probe = "from lora_kata.grading.server import preload; import torch; print(preload(), torch.cuda.is_initialized())"
    completed = subprocess.run([sys.executable, "-c", probe], cwd=REPOSITORY, capture_output=True, text=True,
                               timeout=300, check=True)  # fmt: skip
    assert completed.stdout.split("\n")[-2] == "[] False", completed.stdout + completed.stderr
