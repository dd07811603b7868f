"""The untouched kata stubs fail every check, each with one clear line, and never a collection error."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

from grader.signatures import SIGNATURES, plain, signature_of
from lora_kata.grading.implementation import KATAS, Implementation
from lora_kata.grading.run import run_grader
from tests.implementations import KATAS as KATAS_FOLDER
from tests.implementations import REPOSITORY, is_stub

pytestmark = pytest.mark.skipif(
    not all(is_stub(kata) for kata in KATAS), reason="katas/ is being solved: these checks need the shipped stubs"
)


# apply_lora, masked_prompt, fused_lora, gpt2_conv1d, multi_adapter, nf4 and train_step stand on their own;
# merge_weights needs a working LoRALinear first, qlora a working nf4, the capstone a working apply_lora (and the
# katas after it); adapter_io's checks first build the model with LoRALinear (or LoRAConv1D), or call load_adapter.
EXPECTED_FIRST_WORDS = {
    "lora_linear": "not implemented yet: kata lora_linear",
    "apply_lora": "not implemented yet: kata apply_lora",
    "merge_weights": "blocked: finish lora_linear first",
    "masked_prompt": "not implemented yet: kata masked_prompt",
    "fused_lora": "not implemented yet: kata fused_lora",
    "train_step": "not implemented yet: kata train_step",
    "capstone": "blocked: finish apply_lora first",  # the capstone's pipeline starts with apply_lora
    "nf4": "not implemented yet: kata nf4",
    "qlora": "blocked: finish nf4 first",
    "gpt2_conv1d": "not implemented yet: kata gpt2_conv1d",
    "adapter_io": (
        "blocked: finish lora_linear first",
        "blocked: finish gpt2_conv1d first",
        "not implemented yet: kata adapter_io",
    ),
    "multi_adapter": "not implemented yet: kata multi_adapter",
}


def test_every_check_of_every_stub_fails_with_one_line():
    results = run_grader(KATAS_FOLDER)
    ran = [result for result in results if result.outcome != "skipped"]
    assert ran and all(result.outcome == "failed" for result in ran), "a check passes an unimplemented stub"
    for result in ran:
        assert "\n" not in result.message, f"{result.check}: a multi-line message: {result.message!r}"
        expected = EXPECTED_FIRST_WORDS[result.kata]
        assert result.message.startswith(expected), f"{result.kata}::{result.check}: {result.message!r}"


def test_pytest_grader_reports_one_line_per_check_without_tracebacks():
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "grader/test_lora_linear.py", "-p", "no:cacheprovider"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    failures = completed.stdout.split("= FAILURES =")[1].split("= short test summary info =")[0]
    section = failures.split("= lora-kata score =")[0]
    lines = [line for line in section.splitlines() if line.strip("= ")]
    headers, verdicts = lines[0::2], lines[1::2]
    assert len(headers) == len(verdicts) == completed.stdout.count("\nFAILED "), f"not one line per check:\n{section}"
    assert all(header.startswith("_") and header.endswith("_") for header in headers), section
    assert all(verdict.startswith("not implemented yet: kata lora_linear") for verdict in verdicts), section
    assert "Traceback" not in completed.stdout and "ERROR" not in completed.stdout


def called_by_name(module: object) -> list[str]:
    """What callers call by name in a stub module: its public functions and classes (not an autograd.Function,
    which torch calls), and the public methods of those classes that override nothing (forward, nn.Module's hooks
    and autograd.Function's methods are torch's to call)."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or not callable(value) or value.__module__ != module.__name__:
            continue
        if inspect.isclass(value) and issubclass(value, torch.autograd.Function):
            continue
        names.append(name)
        methods = vars(value).items() if inspect.isclass(value) else ()
        names += [
            f"{name}.{method}"
            for method, function in methods
            if inspect.isfunction(function)
            and not method.startswith("_")
            and not any(hasattr(base, method) for base in value.__mro__[1:])
        ]
    return names


def test_the_signature_table_is_the_shipped_stubs():
    stubs = Implementation(KATAS_FOLDER)
    assert list(SIGNATURES) == list(KATAS)
    for kata, table in SIGNATURES.items():
        module = stubs.module(kata)
        assert list(table) == called_by_name(module), f"grader/signatures.py lists other definitions of {kata}"
        for name, text in table.items():
            owner, _, method = name.partition(".")
            assert plain(signature_of(getattr(module, owner), method)) == text, f"{kata}.{name}"
