"""Find the implementation under grade and import its kata modules, one at a time.

The implementation is a folder holding the kata modules (``lora_linear.py``, ...). It is imported
as a package named ``katas`` whatever the folder is called, so its modules may import each other
relatively (``from .lora_linear import LoRALinear``) or absolutely (``from katas.lora_linear ...``).
Its ``__init__.py`` is not run, and each kata module is imported on its own, so one broken kata
never hides the others.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from lora_kata.grading.time_limit import time_limit_of

PACKAGE = "katas"
KATAS = (
    "lora_linear",
    "apply_lora",
    "merge_weights",
    "masked_prompt",
    "fused_lora",
    "gpt2_conv1d",
    "adapter_io",
    "multi_adapter",
    "nf4",
    "qlora",
    "train_step",
)
CAPSTONE = "capstone"  # grader/test_capstone.py: checks over several katas at once, with no module of its own
GRADED = (*KATAS, CAPSTONE)  # what a full grading runs, each with its row in the score table
REPOSITORY = Path(__file__).resolve().parents[2]
CHECKS = REPOSITORY / "grader"  # the checks, one test_<kata>.py per kata
ENGINE = REPOSITORY / "lora_kata"  # this package: what runs them


class ImplementationNotFound(Exception):
    """The ``--impl`` argument names no folder of kata modules."""


class KataUnavailable(Exception):
    """A kata module could not be imported, or lacks what the grader needs from it."""


class ImportTimedOut(Exception):
    """A kata module's import ran past the check's time limit (an endless loop at import, say).

    Raised once, in the check whose timer fired, so that check stops there: its timer is spent, and the
    rest of its set-up must not run unguarded. The kata's module is not imported again (``_KataFinder``).
    """

    def __init__(self, problem: str, location: str) -> None:
        super().__init__(problem)
        self.location = location


class _ImportRefused(ImportError):
    """``import katas.<kata>`` of a kata whose import timed out before: refused at once."""


class _FromSource(importlib.machinery.SourceFileLoader):
    """Compiles a submission's module from its source at every import: no ``__pycache__`` file is read or written.
    A .pyc is matched to its source by size and mtime in whole seconds, so an edit of the same length saved within
    the second of the last grading (``lora-kata watch``) would be graded as the code before it."""

    def path_stats(self, path: str) -> dict[str, float]:
        raise OSError("a submission's bytecode is never cached")  # get_code then compiles, and writes nothing


class _KataFinder(importlib.abc.MetaPathFinder):
    """Finds ``katas.<name>`` in the implementation's folder, always from source (``_FromSource``), and refuses
    the kata modules whose import timed out, so another kata importing them (``from .lora_linear import LoRALinear``)
    fails at once instead of looping again, unguarded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.refused: dict[str, str] = {}  # kata -> why

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith(PACKAGE + ".") or name.count(".") != 1:
            return None
        kata = name.removeprefix(PACKAGE + ".")
        if kata in self.refused:
            raise _ImportRefused(f"blocked: fix {kata}.py first ({self.refused[kata]})")
        source = self.folder / f"{kata}.py"
        if not source.is_file():
            return None  # a package of the folder, or nothing: the path finder decides
        return importlib.util.spec_from_file_location(name, source, loader=_FromSource(name, str(source)))


def locate(spec: str | Path) -> Path:
    """The folder of kata modules named by ``spec``: a path, a folder of this repository, or a package.

    A folder that holds no kata module but a ``katas/`` folder that does (a submission's checkout)
    resolves to that ``katas/`` folder.
    """
    for candidate in _candidates(str(spec)):
        if candidate.is_file():
            raise ImplementationNotFound(
                f"--impl {spec}: {candidate} is a file, not a folder: point --impl at the folder that holds the kata "
                f"modules ({candidate.parent or '.'})"
            )
        if candidate.is_dir():
            for folder in (candidate, candidate / PACKAGE):
                if any((folder / f"{kata}.py").is_file() for kata in KATAS):
                    return folder.resolve()
            raise ImplementationNotFound(
                f"--impl {spec}: {candidate} holds none of {', '.join(k + '.py' for k in KATAS)}: "
                "point --impl at the folder that holds the kata modules"
            )
    raise ImplementationNotFound(
        f"--impl {spec}: no such folder or importable package: "
        "pass a path (e.g. --impl submissions/alice), 'katas' or 'solutions'"
    )


def _candidates(spec: str) -> Iterator[Path]:
    """Where ``spec`` may point, in order: a path, a folder of this repository, an importable package."""
    yield Path(spec).expanduser()
    yield REPOSITORY / spec
    if spec.isidentifier() and spec != PACKAGE:
        try:
            found = importlib.util.find_spec(spec)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.submodule_search_locations:
            yield from (Path(location) for location in found.submodule_search_locations)


class Implementation:
    """The kata modules of one folder, imported lazily under the package name ``katas``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._imported: dict[str, ModuleType | KataUnavailable] = {}
        self._finder = _install_package(folder)

    def module(self, kata: str) -> ModuleType:
        """The kata's module; raises ``KataUnavailable`` (with file, line and error) when it cannot be imported."""
        if kata not in self._imported:
            self._imported[kata] = self._import(kata)
        outcome = self._imported[kata]
        if isinstance(outcome, KataUnavailable):
            raise KataUnavailable(str(outcome))
        return outcome

    def attribute(self, kata: str, name: str) -> Any:
        """``name`` from the kata's module; raises ``KataUnavailable`` when it is missing."""
        module = self.module(kata)
        if not hasattr(module, name):
            raise KataUnavailable(f"{kata}.py defines no {name}: the grader imports {name} from it (see the stub)")
        return getattr(module, name)

    def _import(self, kata: str) -> ModuleType | KataUnavailable:
        if not (self.folder / f"{kata}.py").is_file():
            return KataUnavailable(f"{self.folder / kata}.py does not exist: copy the stub from katas/ and fill it in")
        try:
            return importlib.import_module(f"{PACKAGE}.{kata}")
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # SystemExit and pytest's outcomes too: an import must not end grading
            limit = time_limit_of(error)
            if limit is None:
                return KataUnavailable(self._describe_import_failure(kata, error))
            path, line = self.innermost_frame(error) or (self.folder / f"{kata}.py", 1)
            location = f"{self.relative(path)}:{line}"
            why = f"its import ran past the {limit} check time limit at {location}: an endless loop at import?"
            culprit = Path(path).stem if Path(path).stem in KATAS else kata
            self._finder.refused[culprit] = why
            self._imported[culprit] = KataUnavailable(f"{culprit}.py could not be imported: {why}")
            problem = str(self._imported[culprit]) if culprit == kata else f"blocked: fix {culprit}.py first ({why})"
            self._imported[kata] = KataUnavailable(problem)
            raise ImportTimedOut(problem, location) from None

    def _describe_import_failure(self, kata: str, error: BaseException) -> str:
        if isinstance(error, _ImportRefused):
            return str(error)
        if isinstance(error, SyntaxError) and error.filename:
            where = (Path(error.filename), error.lineno)
        else:
            where = self.innermost_frame(error) or (self.folder / f"{kata}.py", None)
        path, line = where
        culprit = Path(path).stem
        location = f"{self.relative(path)}:{line}" if line else self.relative(path)
        problem = f"{type(error).__name__}: {error}"
        if culprit != kata and culprit in KATAS:
            return f"blocked: fix {culprit}.py first ({problem} at {location})"
        return f"{kata}.py could not be imported: {problem} at {location}"

    def innermost_frame(self, error: BaseException, kata: str | None = None) -> tuple[Path, int] | None:
        """File and line of the deepest traceback frame inside the implementation's folder
        (inside ``<kata>.py`` when ``kata`` is given)."""
        found, inside = None, os.path.join(self.folder, "")
        # Frames and line numbers only: extract_tb would read every frame's source line, deep into torch.
        for frame, line in traceback.walk_tb(error.__traceback__):
            filename = frame.f_code.co_filename
            if filename.startswith(inside) and kata in (None, Path(filename).stem):
                found = (Path(filename), line)
        return found

    def relative(self, path: Path | str) -> str:
        """``path`` as the user would type it: relative to the working directory when inside it."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def _install_package(folder: Path) -> _KataFinder:
    """Make ``import katas.<kata>`` load ``folder/<kata>.py``, replacing any earlier ``katas``; the finder
    returned refuses the kata modules whose import timed out."""
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _KataFinder)]
    finder = _KataFinder(folder)
    sys.meta_path.insert(0, finder)
    spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
    importlib.invalidate_caches()
    return finder
