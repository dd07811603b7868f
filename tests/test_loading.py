"""--impl finds any folder of kata modules, and a broken kata never breaks the grading of the others."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lora_kata.grading.implementation import GRADED, ImplementationNotFound, locate
from lora_kata.grading.run import run_grader
from tests.implementations import REPOSITORY, SOLUTIONS, implementation_folder


def outcomes(results) -> dict[str, set[str]]:
    """kata -> the set of outcomes of its checks."""
    summary: dict[str, set[str]] = {}
    for result in results:
        summary.setdefault(result.kata, set()).add(result.outcome)
    return summary


def messages(results, kata: str) -> set[str]:
    return {result.message for result in results if result.kata == kata and result.outcome == "failed"}


def test_locate_finds_repository_folders_paths_and_checkouts(tmp_path):
    assert locate("solutions") == SOLUTIONS
    assert locate(str(SOLUTIONS)) == SOLUTIONS
    checkout = implementation_folder(tmp_path / "alice" / "katas")
    assert locate(tmp_path / "alice") == checkout.resolve()


@pytest.mark.parametrize("spec", ["no/such/folder", "tests"], ids=["missing", "no-kata-modules"])
def test_locate_explains_a_bad_impl(spec):
    with pytest.raises(ImplementationNotFound, match="--impl"):
        locate(spec)


def test_a_bad_impl_is_one_error_line_and_exit_code_4():
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "grader/", "--impl", "no/such/folder", "-p", "no:cacheprovider"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 4
    assert completed.stderr.strip().splitlines() == [
        "ERROR: --impl no/such/folder: no such folder or importable package: "
        "pass a path (e.g. --impl submissions/alice), 'katas' or 'solutions'"
    ]


def test_any_folder_name_and_absolute_imports_work(tmp_path):
    source = (SOLUTIONS / "apply_lora.py").read_text().replace("from .lora_linear", "from katas.lora_linear")
    folder = implementation_folder(tmp_path / "submission-2024 (final)", {"apply_lora": source})
    assert outcomes(run_grader(folder, ["apply_lora"])) == {"apply_lora": {"passed", "skipped"}}


def test_a_syntax_error_fails_its_kata_and_blocks_the_katas_that_need_it(tmp_path):
    folder = implementation_folder(tmp_path / "sub", {"lora_linear": "class LoRALinear(:\n"})
    # One check of each kata, which imports and calls it: that every other kata is still graded is what matters here.
    first_checks = ["-k", "test_takes_the_stubs_parameters or test_the_response_loss_falls"]
    results = run_grader(folder, pytest_args=first_checks)
    blocked = {
        kata: {"failed"}
        for kata in ("lora_linear", "apply_lora", "merge_weights", "gpt2_conv1d", "adapter_io", "capstone")
    }
    standalone = {
        kata: {"passed"} for kata in ("masked_prompt", "fused_lora", "multi_adapter", "nf4", "qlora", "train_step")
    }
    ran = {kata: found - {"skipped"} for kata, found in outcomes(results).items()}  # skips depend on what is installed
    assert ran == {**blocked, **standalone}
    (message,) = messages(results, "lora_linear")
    assert message.startswith("lora_linear.py could not be imported: SyntaxError") and "lora_linear.py:1" in message
    assert all(m.startswith("blocked: fix lora_linear.py first") for m in messages(results, "apply_lora"))


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import no_such_module\n", "ModuleNotFoundError"),
        ("import sys\nsys.exit(0)\n", "SystemExit"),
        ("raise RuntimeError('boom at import')\n", "boom at import"),
        ("x = 1\n", "defines no merge_weights"),
    ],
    ids=["import-error", "sys-exit", "exception", "missing-function"],
)
def test_a_broken_module_costs_only_its_own_kata(tmp_path, source, expected):
    # The katas graded before it and one after it that needs none of it (the syntax-error test grades them all).
    katas = ["lora_linear", "apply_lora", "merge_weights", "masked_prompt"]
    results = run_grader(implementation_folder(tmp_path / "sub", {"merge_weights": source}), katas)
    assert outcomes(results)["lora_linear"] == outcomes(results)["apply_lora"] == {"passed", "skipped"}
    assert outcomes(results)["masked_prompt"] - {"skipped"} == {"passed"}
    assert outcomes(results)["merge_weights"] == {"failed", "skipped"}
    assert all(expected in message for message in messages(results, "merge_weights"))


def test_a_missing_module_says_which_file_to_write(tmp_path):
    folder = implementation_folder(tmp_path / "sub")
    (folder / "merge_weights.py").unlink()
    results = run_grader(folder, ["merge_weights"])
    assert all("merge_weights.py does not exist" in message for message in messages(results, "merge_weights"))


def test_the_same_submission_always_gets_the_same_grade(tmp_path):
    wrong = (SOLUTIONS / "lora_linear.py").read_text().replace("self.scaling = alpha / r", "self.scaling = alpha")
    folder = implementation_folder(tmp_path / "sub", {"lora_linear": wrong})
    # A second grading in the reverse order, in the same process: what one kata's checks leave behind (seeds,
    # caches, modules) must change neither that grading nor the next.
    runs = [run_grader(folder), run_grader(folder, list(reversed(GRADED)))]
    grades = [sorted(results, key=lambda result: (result.kata, result.check)) for results in runs]
    assert grades[0] == grades[1], "the grade depends on the run, or on the order of the katas"
    assert {result.outcome for result in runs[0]} == {"passed", "failed", "skipped"}


def test_an_edit_of_the_same_length_within_the_same_second_is_graded_as_edited(tmp_path, monkeypatch):
    """Python matches a .pyc to its source by size and mtime in whole seconds: the grader compiles a submission from
    its source every time, so that a quick one-character fix is never graded as the code before it."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as on a learner's machine (this one may set it)
    right = (SOLUTIONS / "lora_linear.py").read_text()
    folder = implementation_folder(tmp_path / "sub", {"lora_linear": right})
    module = folder / "lora_linear.py"
    check = ["test_records_r_alpha_and_scaling"]
    assert {result.outcome for result in run_grader(folder, ["lora_linear"], only=check)} == {"passed"}
    saved = module.stat()
    module.write_text(right.replace("self.scaling = alpha / r", "self.scaling = alpha * r"))
    os.utime(module, ns=(saved.st_atime_ns, saved.st_mtime_ns))
    assert module.stat().st_size == saved.st_size
    assert {result.outcome for result in run_grader(folder, ["lora_linear"], only=check)} == {"failed"}
    assert not (folder / "__pycache__").exists(), "the grader wrote bytecode into the submission's folder"


def test_an_error_raised_in_another_kata_points_at_the_call_in_this_one(tmp_path):
    swapped = (
        (SOLUTIONS / "apply_lora.py")
        .read_text()
        .replace("LoRALinear(module, r, alpha, dropout)", "LoRALinear(module, alpha, r, dropout)")
    )
    folder = implementation_folder(tmp_path / "sub", {"apply_lora": swapped})
    failed = [result for result in run_grader(folder, ["apply_lora"]) if result.outcome == "failed"]
    call_line = next(
        number for number, line in enumerate(swapped.splitlines(), 1) if "LoRALinear(module, alpha" in line
    )
    # The checks whose own verdict wraps the error (the call-style check) point at apply_lora's definition instead.
    raised = [result for result in failed if "(called from" in result.message]
    assert raised and all(result.location == f"{folder / 'apply_lora.py'}:{call_line}" for result in raised)
    assert all(f"(called from {folder / 'apply_lora.py'}:{call_line})" in result.message for result in raised)
    assert all(result.location.startswith(f"{folder / 'apply_lora.py'}:") for result in failed)


def test_a_check_that_never_returns_fails_at_its_time_limit_with_the_line_it_was_stuck_on(tmp_path):
    source = (SOLUTIONS / "lora_linear.py").read_text()
    stuck = source.replace("        self.scaling = alpha / r\n", "        while True:\n            pass\n")
    folder = implementation_folder(tmp_path / "sub", {"lora_linear": stuck})
    checks = ["--check-timeout", "0.5", "-k", "test_records_r_alpha_and_scaling"]
    (result,) = run_grader(folder, ["lora_linear"], pytest_args=checks)
    loop = next(number for number, text in enumerate(stuck.splitlines(), 1) if text.strip() == "while True:")
    stuck_at = {f"{folder / 'lora_linear.py'}:{line}" for line in (loop, loop + 1)}  # either line of the loop
    assert result.outcome == "failed" and result.location in stuck_at
    expected = f"timed out after 0.5 s of CPU time, stuck at {result.location}: an endless loop, or far slower than it"
    assert result.message == expected + " should be?"


def test_a_not_implemented_error_from_torch_is_an_error_not_an_unsolved_stub(tmp_path):
    source = (SOLUTIONS / "lora_linear.py").read_text()
    unsupported = source.replace(
        "        self.scaling = alpha / r\n",
        "        self.scaling = alpha / r\n        nn.init.orthogonal_(torch.empty(2, 2, dtype=torch.bfloat16))\n",
    )
    results = run_grader(implementation_folder(tmp_path / "sub", {"lora_linear": unsupported}), ["lora_linear"])
    (message,) = {result.message.split(":")[0] for result in results if result.outcome == "failed"}
    assert message == f"NotImplementedError raised at {tmp_path / 'sub' / 'lora_linear.py'}"


def test_a_missing_class_fails_the_checks_that_use_its_attributes(tmp_path):
    source = (SOLUTIONS / "fused_lora.py").read_text().replace("class FusedLoRAFunction(", "class Renamed(")
    results = run_grader(implementation_folder(tmp_path / "sub", {"fused_lora": source}), ["fused_lora"])
    # The checks of the function: not the layer's, nor the signatures' (FusedLoRAFunction's are torch's own).
    function_checks = [r for r in results if not any(w in r.check for w in ("layer", "training", "stubs_parameters"))]
    otherwise = [
        (r.check, r.outcome, r.message)
        for r in function_checks
        if not (r.outcome == "failed" and r.message.startswith("fused_lora.py defines no FusedLoRAFunction"))
    ]
    assert len(function_checks) >= 7 and not otherwise, otherwise
