"""Tamper evidence: what a submission may not touch while it is graded.

The grader records the objects it compares with before any submission code runs; after each check
it looks for replaced ones, restores them and fails the check. It also refuses imports of the
reference solutions and notices edits to its own files. A determined attacker running code in the
grader's process can still do more; grade untrusted code with `lora-kata grade` or `batch`, whose
separate processes add time, memory and file guards.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.util
import math
import sys
from pathlib import Path
from types import FunctionType, ModuleType

GUARDED_MODULES = ("torch", "torch.nn", "torch.nn.functional", "torch.linalg", "torch.testing", "math", "builtins")
_UNSET = object()
# Markers torch itself adds to guarded classes: torch._dynamo sets nn.Module.___needs_generation_tag_patch = False
# when it wraps nn.Module.__init__ (on the first torch.compile).
TORCH_MARKERS = frozenset({"___needs_generation_tag_patch"})


def torch_folder() -> Path | None:
    """The folder of the installed torch package (None when torch is not installed)."""
    spec = importlib.util.find_spec("torch")
    return Path(spec.origin).parent if spec and spec.origin else None


def wraps_as_torch_does(new: object, old: object, folder: Path | None) -> bool:
    """Whether ``new`` is torch's own wrapper of ``old``: a function written in torch's package that wraps
    the very object it replaced (its ``__wrapped__``, or a variable it closes over).

    Importing torch._dynamo (as ``torch.compile``, peft and many libraries do) replaces ``torch.manual_seed``
    with such a wrapper, and the first ``torch.compile`` wraps ``nn.Module.__init__``: torch's changes, not a
    submission's. A submission's own function, even one passed through a torch decorator, wraps something
    else, and is still caught.
    """
    if folder is None or not isinstance(new, FunctionType):
        return False
    try:
        Path(new.__code__.co_filename).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    if getattr(new, "__wrapped__", _UNSET) is old:
        return True
    cells = new.__closure__ or ()
    return any(_cell_value(cell) is old for cell in cells)


def _cell_value(cell: object) -> object:
    try:
        return cell.cell_contents  # type: ignore[attr-defined]
    except ValueError:  # an empty cell
        return _UNSET


class ObjectGuard:
    """The attributes of the guarded modules and classes as they were when the guard was made.

    A guarded class may gain no attribute (setting ``torch.Tensor.abs`` shadows the C method);
    a guarded module may (torch adds submodules as they are first imported). torch's own replacements
    (``wraps_as_torch_does``) and markers (``TORCH_MARKERS``) are adopted, not reported.
    """

    def __init__(self) -> None:
        import pytest  # here, like torch in guarded_classes: the parent `lora-kata` process needs neither

        modules: list[ModuleType] = [math, builtins, pytest]
        modules += [sys.modules[name] for name in GUARDED_MODULES if name in sys.modules]
        modules += [module for name, module in sys.modules.items() if name.split(".")[0] == "grader" and module]
        self.modules = {module: dict(vars(module)) for module in modules}
        self.classes = {cls: dict(vars(cls)) for cls in guarded_classes()}
        self.torch = torch_folder()

    def replaced(self) -> list[str]:
        """Qualified names of the guarded attributes that are no longer the objects they were.

        torch's own changes are adopted into the record first: they are neither reported nor undone.
        """
        found = []
        for owner, saved in [*self.modules.items(), *self.classes.items()]:
            now = vars(owner)
            for name, value in saved.items():
                new = now.get(name, _UNSET)
                if new is value:
                    continue
                if wraps_as_torch_does(new, value, self.torch):
                    saved[name] = new
                else:
                    found.append(f"{owner.__name__}.{name}")
            if owner in self.classes:
                for name in now.keys() - saved.keys():
                    if name in TORCH_MARKERS:
                        saved[name] = now[name]
                    else:
                        found.append(f"{owner.__name__}.{name}")
        return found

    def restore(self) -> None:
        """Put every guarded attribute back as it was."""
        for owner, saved in [*self.modules.items(), *self.classes.items()]:
            for name, value in saved.items():
                if vars(owner).get(name, _UNSET) is not value:
                    setattr(owner, name, value)
            if owner in self.classes:
                for name in vars(owner).keys() - saved.keys():
                    delattr(owner, name)


def guarded_classes() -> tuple[type, ...]:
    """The torch classes whose attributes a submission may not replace.

    torch is imported here, not at the top: `lora-kata` itself only fingerprints files, and starts faster without it.
    """
    import torch
    from torch import nn

    return (torch.Tensor, nn.Module, nn.Linear, nn.Parameter)


class ReferenceBlocker(importlib.abc.MetaPathFinder):
    """Refuses imports of the reference solutions while a submission is graded, and remembers them."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "solutions" or fullname.startswith("solutions."):
            self.attempts.append(fullname)
            raise ImportError(f"tampering: the submission imports {fullname}, the reference answers; write your own")
        return None


def fingerprint(folder: Path) -> dict[Path, bytes]:
    """The contents of the grader's source and data files, to notice and undo edits."""
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.suffix in {".py", ".toml", ".txt"}}


def changed_files(before: dict[Path, bytes], folder: Path) -> list[Path]:
    """Files of ``before`` whose contents differ now (or that are gone)."""
    now = fingerprint(folder)
    return [path for path, content in before.items() if now.get(path) != content]
