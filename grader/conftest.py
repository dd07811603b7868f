"""pytest plumbing of the grader: the --impl option, the kata fixtures, a fixed random state.

The one-line reports and the score table live in ``lora_kata/grading/report.py``, the tamper guards in
``lora_kata/grading/tamper_plugin.py``; both are plugins of the grading engine that this file registers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

from lora_kata.grading.implementation import (
    ENGINE,
    Implementation,
    ImplementationNotFound,
    KataUnavailable,
    locate,
)
from lora_kata.grading.report import Reporter, kata_of
from lora_kata.grading.results import Collector
from lora_kata.grading.tamper_plugin import TamperWatch
from lora_kata.grading.time_limit import WALL_FACTOR, CpuTimeLimit

GRADER = Path(__file__).resolve().parent
CHECK_TIMEOUT_S = 20
IMPLEMENTATION = pytest.StashKey[Implementation]()

# Derandomized: the same submission always gets the same grade.
settings.register_profile(
    "grader",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=20,
    print_blob=False,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("grader")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("lora-kata").addoption(
        "--impl",
        default=os.environ.get("KATA_IMPL", "katas"),
        help="folder (or package) of kata modules to grade: katas (default, or $KATA_IMPL), solutions, or a path",
    )
    parser.getgroup("lora-kata").addoption(
        "--check-timeout",
        type=float,
        default=CHECK_TIMEOUT_S,
        help=f"seconds of CPU time each check may take before it fails as stuck (default {CHECK_TIMEOUT_S}; "
        f"a check waiting {WALL_FACTOR} times as long on the clock fails too)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "timeout", None) is None:  # pytest-timeout's default (and header): a check's limit
        config.option.timeout = config.getoption("check_timeout")
    config.addinivalue_line("markers", "points(n): what each case of a check is worth")
    config.addinivalue_line(
        "markers", "subject(name): the definition a failing check points at, if not SUBJECT (KATA:NAME: another kata's)"
    )
    if not any(isinstance(plugin, Collector) for plugin in config.pluginmanager.get_plugins()):
        config.pluginmanager.register(Collector(), "lora-kata-results")
    try:
        folder = locate(config.getoption("impl"))
    except ImplementationNotFound as error:
        raise pytest.UsageError(str(error)) from None
    implementation = config.stash[IMPLEMENTATION] = Implementation(folder)
    config.pluginmanager.register(TamperWatch(GRADER, ENGINE), "lora-kata-tamper")
    config.pluginmanager.register(CpuTimeLimit(), "lora-kata-time-limit")
    config.pluginmanager.register(Reporter(implementation), "lora-kata-report")


def pytest_report_header(config: pytest.Config) -> str:
    return f"lora-kata grader: grading {config.stash[IMPLEMENTATION].folder}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        points = item.get_closest_marker("points")
        item.user_properties.append(("points", points.args[0] if points else 0))
        item.user_properties.append(("kata", kata_of(item)))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(config.getoption("check_timeout")))


@pytest.fixture(scope="session")
def implementation(pytestconfig: pytest.Config) -> Implementation:
    return pytestconfig.stash[IMPLEMENTATION]


class Unavailable(type):
    """The type of a stand-in for what a kata's module cannot give: calling it or reading any attribute
    (``FusedLoRAFunction.apply``) raises the import problem, so the check fails with it."""

    problem: str

    def __call__(cls, *args: object, **kwargs: object) -> Any:
        raise KataUnavailable(cls.problem)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):  # introspection (copy, inspect) asks for optional dunders
            raise AttributeError(name)
        raise KataUnavailable(cls.problem)


def kata_fixture(kata: str, name: str) -> Any:
    """A session fixture named ``name``: that object of the kata's module, or, when the module cannot give
    it, a stand-in that raises the import problem when the check uses it."""

    @pytest.fixture(scope="session", name=name)
    def kata_object(implementation: Implementation) -> Any:
        try:
            return implementation.attribute(kata, name)
        except KataUnavailable as error:
            return Unavailable(name, (), {"problem": str(error)})

    return kata_object


# What the checks take from the implementation under grade, by fixture name.
LoRALinear = kata_fixture("lora_linear", "LoRALinear")
apply_lora = kata_fixture("apply_lora", "apply_lora")
merge_weights = kata_fixture("merge_weights", "merge_weights")
format_prompt = kata_fixture("masked_prompt", "format_prompt")
build_example = kata_fixture("masked_prompt", "build_example")
collate = kata_fixture("masked_prompt", "collate")
FusedLoRAFunction = kata_fixture("fused_lora", "FusedLoRAFunction")
FusedLoRALinear = kata_fixture("fused_lora", "FusedLoRALinear")
causal_lm_loss = kata_fixture("train_step", "causal_lm_loss")
make_optimizer = kata_fixture("train_step", "make_optimizer")
cosine_with_warmup = kata_fixture("train_step", "cosine_with_warmup")
train_step = kata_fixture("train_step", "train_step")
nf4_code_book = kata_fixture("nf4", "nf4_code_book")
quantize_nf4 = kata_fixture("nf4", "quantize_nf4")
dequantize_nf4 = kata_fixture("nf4", "dequantize_nf4")
QuantizedAbsmax = kata_fixture("nf4", "QuantizedAbsmax")
double_quantize = kata_fixture("nf4", "double_quantize")
dequantize_absmax = kata_fixture("nf4", "dequantize_absmax")
NF4Linear = kata_fixture("qlora", "NF4Linear")
QLoRALinear = kata_fixture("qlora", "QLoRALinear")
apply_qlora = kata_fixture("qlora", "apply_qlora")
LoRAConv1D = kata_fixture("gpt2_conv1d", "LoRAConv1D")
apply_lora_gpt2 = kata_fixture("gpt2_conv1d", "apply_lora_gpt2")
merge_gpt2 = kata_fixture("gpt2_conv1d", "merge_gpt2")
save_adapter = kata_fixture("adapter_io", "save_adapter")
load_adapter = kata_fixture("adapter_io", "load_adapter")
MultiLoRALinear = kata_fixture("multi_adapter", "MultiLoRALinear")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every check starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """CPU kernels sum in an order that depends on the thread count: one thread gives the same floats,
    and so the same grade, on any machine, loaded or not."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True, scope="session")
def _full_precision_matmuls() -> Iterator[None]:
    """TF32 rounds matmul inputs to 10 mantissa bits on GPUs: the 1e-5 checks need it off."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
