"""A submission that imports the references, patches what the grader compares with, or edits the
grader gains no points, and is flagged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from lora_kata.grading.implementation import CHECKS
from lora_kata.grading.isolation import grade_isolated
from lora_kata.grading.run import run_grader
from tests.implementations import REPOSITORY, SOLUTIONS, implementation_folder

B_RANDOM = (
    (SOLUTIONS / "lora_linear.py").read_text().replace("torch.zeros(base.out_features", "torch.randn(base.out_features")
)
EDIT_THE_GRADER = (
    "\nimport pathlib\n\nimport grader.probes\n\npathlib.Path(grader.probes.__file__).write_text('# edited\\n')\n"
)


def failures(results) -> dict[str, str]:
    return {result.check: result.message for result in results if result.outcome == "failed"}


def test_importing_the_reference_answers_is_refused_and_flagged(tmp_path):
    source = "from solutions.lora_linear import LoRALinear  # noqa: F401\n"
    results = run_grader(implementation_folder(tmp_path / "sub", {"lora_linear": source}), ["lora_linear"])
    failed = failures(results)
    assert failed and all("tampering" in m and "solutions" in m and "reference answers" in m for m in failed.values())


@pytest.mark.parametrize(
    "patch",
    [
        "torch.Tensor.max = lambda self, *args, **kwargs: torch.zeros(())",
        "torch.linalg.matrix_rank = lambda *args, **kwargs: torch.tensor(1)",
        "import math\nmath.isclose = lambda *args, **kwargs: True",
        "import pytest\npytest.fail = lambda *args, **kwargs: None",
        "import sys\nsys.modules['grader.test_lora_linear'].max_difference = lambda *args: 0.0",
        "torch.manual_seed = torch._disable_dynamo(lambda seed: torch.random.manual_seed(seed + 1))",
    ],
    ids=["Tensor.max", "matrix_rank", "math.isclose", "pytest.fail", "grader-helper", "torch-decorated"],
)
def test_patching_what_the_grader_compares_with_gains_nothing(tmp_path, patch):
    folder = implementation_folder(tmp_path / "sub", {"lora_linear": B_RANDOM + "\n" + patch + "\n"})
    failed = failures(run_grader(folder, ["lora_linear"]))
    assert any(message.startswith("tampering: the submission replaced") for message in failed.values()), failed
    assert "test_output_equals_the_base_at_init" in failed, "the wrong answer gained the points it patched for"


def test_torch_own_wrappers_from_torch_compile_are_no_tampering(tmp_path):
    """Importing torch._dynamo wraps torch.manual_seed, the first torch.compile wraps nn.Module.__init__:
    torch's changes, which must not fail a correct answer."""
    source = (REPOSITORY / "tests" / "right_answers" / "compiled" / "lora_linear.py").read_text()
    failed = failures(run_grader(implementation_folder(tmp_path / "sub", {"lora_linear": source}), ["lora_linear"]))
    assert not failed, failed


@pytest.mark.parametrize(
    "slot_names", ["", "        torch.Tensor.__slotnames__ = ['grad']\n"], ids=["python's", "edited"]
)
def test_pythons_pickling_cache_is_no_tampering_and_an_edit_of_it_is(tmp_path, slot_names):
    """Pickling a tensor (torch.save into a buffer, a snapshot) makes CPython's copyreg cache
    ``Tensor.__slotnames__``: Python's bookkeeping, not the submission's; a value of the submission's own is."""
    pickled = (
        (SOLUTIONS / "lora_linear.py")
        .read_text()
        .replace(
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n",
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
            "        import io\n\n        torch.save(torch.zeros(2), io.BytesIO())\n" + slot_names,
        )
    )
    assert pickled.count("torch.save") == 1
    failed = failures(run_grader(implementation_folder(tmp_path / "sub", {"lora_linear": pickled}), ["lora_linear"]))
    if slot_names:
        assert any("replaced Tensor.__slotnames__" in message for message in failed.values()), failed
    else:
        assert not failed, failed


def test_patching_at_call_time_is_caught_after_the_check(tmp_path):
    patched = B_RANDOM.replace(
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        torch.Tensor.abs = lambda t: t * 0\n",
    )
    failed = failures(run_grader(implementation_folder(tmp_path / "sub", {"lora_linear": patched}), ["lora_linear"]))
    assert failed.get("test_output_equals_the_base_at_init", "").startswith("tampering: the submission replaced")


def test_editing_the_grader_in_an_isolated_grading_zeroes_the_submission(tmp_path):
    source = (SOLUTIONS / "apply_lora.py").read_text() + EDIT_THE_GRADER
    before = (CHECKS / "probes.py").read_bytes()
    # The rows before, at and after the kata that edits the grader: zeroing does not depend on the row.
    rows = ["lora_linear", "apply_lora", "merge_weights"]
    grading = grade_isolated(implementation_folder(tmp_path / "sub", {"apply_lora": source}), rows)
    assert (CHECKS / "probes.py").read_bytes() == before, "the real grader was edited"
    assert "tampering: the submission edited the grader's ['probes.py']" in grading.problem
    assert {result.kata for result in grading.results} == set(rows)
    assert all(result.outcome != "passed" for result in grading.results)


def test_editing_the_grader_under_plain_pytest_is_flagged_and_fails_the_run(tmp_path):
    copy = tmp_path / "trusted" / "grader"
    shutil.copytree(CHECKS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = (SOLUTIONS / "apply_lora.py").read_text() + EDIT_THE_GRADER
    folder = implementation_folder(tmp_path / "sub", {"apply_lora": source})
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", str(copy / "test_apply_lora.py"), "--impl", str(folder), "-p", "no:cacheprovider"],  # noqa: E501
        cwd=tmp_path / "trusted", env={**os.environ, "PYTHONPATH": str(tmp_path / "trusted")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "tampering: the grader's files changed during grading: ['probes.py']" in completed.stdout


@pytest.mark.parametrize("config", ["pytest.ini", "pyproject.toml"])
def test_a_pytest_configuration_in_the_submission_changes_nothing(tmp_path, config):
    folder = implementation_folder(tmp_path / "sub", {"lora_linear": B_RANDOM})
    header = "[pytest]" if config == "pytest.ini" else "[tool.pytest.ini_options]"
    (folder / config).write_text(f'{header}\npython_functions = "nothing_"\nfilterwarnings = "ignore"\n')
    results = grade_isolated(folder, ["lora_linear", "fused_lora"]).results
    assert "test_output_equals_the_base_at_init" in failures(results)
    checks = {(result.kata, result.check) for result in results}
    assert len(checks) == len(results), "two checks were reported under one name"
    assert {kata for kata, _ in checks} == {"lora_linear", "fused_lora"}


@pytest.mark.parametrize(
    "skip", ["__import__('pytest').skip('not today')", "raise __import__('unittest').SkipTest('not today')"]
)
def test_a_check_the_submission_skips_counts_as_failed(tmp_path, skip):
    source = (SOLUTIONS / "lora_linear.py").read_text()
    source = source.replace("        super().__init__()\n", f"        super().__init__()\n        {skip}\n", 1)
    results = run_grader(implementation_folder(tmp_path / "sub", {"lora_linear": source}), ["lora_linear"])
    skipped = {result.message for result in results if result.outcome == "skipped"}
    assert skipped == {"no CUDA device here: grade on a GPU machine to run the cuda cases"}
    failed = failures(results)
    assert len(failed) == len(results) - sum(result.outcome == "skipped" for result in results)
    assert any(message.startswith("the submission skipped the check") for message in failed.values())
