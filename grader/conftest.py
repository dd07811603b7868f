"""pytest plumbing of the grader: the --impl option, the kata fixtures, one-line failure reports."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

from grader.implementation import KATAS, Implementation, ImplementationNotFound, KataUnavailable, locate
from grader.results import Collector, score_table
from grader.tamper import ObjectGuard, ReferenceBlocker, changed_files, fingerprint

GRADER = Path(__file__).resolve().parent
CHECK_TIMEOUT_S = 20
IMPLEMENTATION = pytest.StashKey[Implementation]()
GUARD = pytest.StashKey[ObjectGuard]()
BLOCKER = pytest.StashKey[ReferenceBlocker]()
GRADER_FILES = pytest.StashKey[dict[Path, bytes]]()
TAMPERING = pytest.StashKey[list[str]]()

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "points(n): what each case of a check is worth")
    if not any(isinstance(plugin, Collector) for plugin in config.pluginmanager.get_plugins()):
        config.pluginmanager.register(Collector(), "lora-kata-results")
    try:
        folder = locate(config.getoption("impl"))
    except ImplementationNotFound as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[IMPLEMENTATION] = Implementation(folder)
    config.stash[GRADER_FILES] = fingerprint(GRADER)
    config.stash[TAMPERING] = []
    config.stash[BLOCKER] = ReferenceBlocker()
    sys.meta_path.insert(0, config.stash[BLOCKER])
    for name in [name for name in sys.modules if name.split(".")[0] == "solutions"]:
        del sys.modules[name]  # a cached module would bypass the blocker


def pytest_unconfigure(config: pytest.Config) -> None:
    if BLOCKER in config.stash and config.stash[BLOCKER] in sys.meta_path:
        sys.meta_path.remove(config.stash[BLOCKER])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Record what the checks compare with now, before any submission code has run."""
    session.config.stash[GUARD] = ObjectGuard()


def pytest_sessionfinish(session: pytest.Session) -> None:
    changed = changed_files(session.config.stash[GRADER_FILES], GRADER)
    if changed:
        session.config.stash[TAMPERING].append(
            f"the grader's files changed during grading: {[p.name for p in changed]}"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_report_header(config: pytest.Config) -> str:
    return f"lora-kata grader: grading {config.stash[IMPLEMENTATION].folder}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        points = item.get_closest_marker("points")
        item.user_properties.append(("points", points.args[0] if points else 0))
        item.user_properties.append(("kata", Path(item.path).stem.removeprefix("test_")))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CHECK_TIMEOUT_S))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    collector = next(plugin for plugin in config.pluginmanager.get_plugins() if isinstance(plugin, Collector))
    if collector.results:
        terminalreporter.write_sep("=", "lora-kata score")
        for line in score_table(collector.results):
            terminalreporter.write_line(line)
    for note in config.stash[TAMPERING]:
        terminalreporter.write_line(f"tampering: {note}", red=True, bold=True)


@pytest.fixture(scope="session")
def implementation(pytestconfig: pytest.Config) -> Implementation:
    return pytestconfig.stash[IMPLEMENTATION]


def _kata_object(implementation: Implementation, kata: str, name: str) -> Any:
    """The object, or a stand-in that raises the import problem when the check calls it."""
    try:
        return implementation.attribute(kata, name)
    except KataUnavailable as error:
        message = str(error)

        class Unavailable(nn.Module):
            def __init__(self, *args: object, **kwargs: object) -> None:
                raise KataUnavailable(message)

        return Unavailable


@pytest.fixture(scope="session")
def LoRALinear(implementation: Implementation) -> type[nn.Module]:
    return _kata_object(implementation, "lora_linear", "LoRALinear")


@pytest.fixture(scope="session")
def apply_lora(implementation: Implementation) -> Any:
    return _kata_object(implementation, "apply_lora", "apply_lora")


@pytest.fixture(scope="session")
def merge_weights(implementation: Implementation) -> Any:
    return _kata_object(implementation, "merge_weights", "merge_weights")


@pytest.fixture(scope="session")
def format_prompt(implementation: Implementation) -> Any:
    return _kata_object(implementation, "masked_prompt", "format_prompt")


@pytest.fixture(scope="session")
def build_example(implementation: Implementation) -> Any:
    return _kata_object(implementation, "masked_prompt", "build_example")


@pytest.fixture(scope="session")
def collate(implementation: Implementation) -> Any:
    return _kata_object(implementation, "masked_prompt", "collate")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every check starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _full_precision_matmuls() -> Iterator[None]:
    """TF32 rounds matmul inputs to 10 mantissa bits on GPUs: the 1e-5 checks need it off."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class _Crash:
    message: str


class Verdict:
    """A failure report of one line: what was expected, what was measured, the likely cause;
    ``location`` is the place in the implementation to look at ("path:line")."""

    def __init__(self, text: str, location: str) -> None:
        self.text = text
        self.location = location
        self.reprcrash = _Crash(text)

    def toterminal(self, writer: Any) -> None:
        writer.line(self.text, red=True, bold=True)

    def __str__(self) -> str:
        return self.text


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and call.excinfo is not None and getattr(item.config.option, "tbstyle", "auto") == "auto":
        report.longrepr = Verdict(verdict(item, call.excinfo.value), blame(item, call.excinfo.value))
    if call.when == "call":
        tampering = _tampering(item.config)
        if tampering:
            item.config.stash[TAMPERING].append(f"{item.name}: {tampering}")
            report.outcome = "failed"
            location = getattr(report.longrepr, "location", "")
            report.longrepr = Verdict(f"tampering: {tampering}; this check does not count", location)
    return report


def _tampering(config: pytest.Config) -> str:
    """What the submission tampered with during the last check ('' if nothing); replaced objects are restored."""
    guard, blocker = config.stash[GUARD], config.stash[BLOCKER]
    replaced = guard.replaced()
    if replaced:
        guard.restore()
        return f"the submission replaced {', '.join(replaced[:4])}, which the grader relies on; restored"
    if blocker.attempts:
        attempts, blocker.attempts[:] = sorted(set(blocker.attempts)), []
        return f"the submission tried to import {', '.join(attempts)}, the reference answers"
    return ""


def blame(item: pytest.Item, error: BaseException) -> str:
    """Where in the implementation to look: the deepest frame of its code in the traceback, else the
    definition the check is about (its module's SUBJECT), else the top of the kata's file."""
    implementation = item.config.stash[IMPLEMENTATION]
    kata = Path(item.path).stem.removeprefix("test_")
    where = implementation.innermost_frame(error)
    if where is None:
        path, line = implementation.folder / f"{kata}.py", 1
        with contextlib.suppress(KataUnavailable, OSError, TypeError):
            subject = implementation.attribute(kata, getattr(item.module, "SUBJECT", ""))
            path, line = Path(inspect.getsourcefile(subject)), inspect.getsourcelines(subject)[1]
        where = (path, line)
    return f"{implementation.relative(where[0])}:{where[1]}"


def verdict(item: pytest.Item, error: BaseException) -> str:
    """One line explaining why ``item`` failed with ``error``."""
    implementation = item.config.stash[IMPLEMENTATION]
    kata = Path(item.path).stem.removeprefix("test_")
    first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
    where = implementation.innermost_frame(error)
    if isinstance(error, KataUnavailable):
        return str(error)
    if isinstance(error, NotImplementedError):
        culprit = where[0].stem if where else kata
        if culprit != kata and culprit in KATAS:
            return f"blocked: finish {culprit} first ({first_line})"
        return f"not implemented yet: {first_line}"
    if where is None:  # a check of the grader failed: its message is the verdict
        message = str(error).split("\nassert ")[0].strip() or first_line
        return " ".join([message, *_hypothesis_notes(error)])
    location = f"{implementation.relative(where[0])}:{where[1]}"
    if isinstance(error, pytest.fail.Exception) and first_line.startswith("Timeout"):
        return f"timed out after {CHECK_TIMEOUT_S} s, stuck at {location}: an endless loop?"
    return f"{type(error).__name__} raised at {location}: {first_line}"


def _hypothesis_notes(error: BaseException) -> list[str]:
    """Hypothesis's 'Falsifying example' note, folded onto one line."""
    notes = getattr(error, "__notes__", [])
    return [" ".join(note.split()) for note in notes if note.startswith("Falsifying")]
