"""Find the implementation under grade and import its kata modules, one at a time.

The implementation is a folder holding the kata modules (``lora_linear.py``, ...). It is imported
as a package named ``katas`` whatever the folder is called, so its modules may import each other
relatively (``from .lora_linear import LoRALinear``) or absolutely (``from katas.lora_linear ...``).
Its ``__init__.py`` is not run, and each kata module is imported on its own, so one broken kata
never hides the others.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "katas"
KATAS = ("lora_linear", "apply_lora", "merge_weights", "masked_prompt", "fused_lora", "multi_adapter")
REPOSITORY = Path(__file__).resolve().parent.parent


class ImplementationNotFound(Exception):
    """The ``--impl`` argument names no folder of kata modules."""


class KataUnavailable(Exception):
    """A kata module could not be imported, or lacks what the grader needs from it."""


def locate(spec: str | Path) -> Path:
    """The folder of kata modules named by ``spec``: a path, a folder of this repository, or a package.

    A folder that holds no kata module but a ``katas/`` folder that does (a submission's checkout)
    resolves to that ``katas/`` folder.
    """
    for candidate in _candidates(str(spec)):
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
        _install_package(folder)

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
            return KataUnavailable(self._describe_import_failure(kata, error))

    def _describe_import_failure(self, kata: str, error: BaseException) -> str:
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
        found = None
        for frame in traceback.extract_tb(error.__traceback__):
            path = Path(frame.filename)
            if path.is_relative_to(self.folder) and kata in (None, path.stem):
                found = (path, frame.lineno)
        return found

    def relative(self, path: Path | str) -> str:
        """``path`` as the user would type it: relative to the working directory when inside it."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def _install_package(folder: Path) -> None:
    """Make ``import katas.<kata>`` load ``folder/<kata>.py``, replacing any earlier ``katas``."""
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
    importlib.invalidate_caches()
