"""Tamper evidence: what a submission may not touch while it is graded.

The grader records the objects it compares with before any submission code runs; after each check
it looks for replaced ones, restores them and fails the check. It also refuses imports of the
reference solutions and notices edits to its own files. A determined attacker running code in the
grader's process can still do more; grade untrusted code with `lora-kata grade` or `batch`, whose
separate processes add time, memory and file guards.
"""

from __future__ import annotations

import builtins
import functools
import importlib.abc
import importlib.util
import math
import sys
from pathlib import Path
from types import FunctionType, ModuleType

GUARDED_MODULES = ("torch", "torch.nn", "torch.nn.functional", "torch.linalg", "torch.testing", "math", "builtins")
GRADER_PACKAGES = ("grader", "lora_kata")  # the checks and the engine that runs them
_UNSET = object()
# The libraries the checks use as oracles: what they change of torch for their own purposes is theirs, not the
# submission's (see ``done_by_a_library``).
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")
# Markers torch itself adds to guarded classes: torch._dynamo sets nn.Module.___needs_generation_tag_patch = False
# when it wraps nn.Module.__init__ (on the first torch.compile).
TORCH_MARKERS = frozenset({"___needs_generation_tag_patch"})


def pythons_slot_names(cls: type, value: object) -> bool:
    """Whether ``value`` is the ``__slotnames__`` CPython's copyreg caches on a class the first time one of its
    instances is pickled (``torch.save``, ``pickle.dumps`` of a tensor): the class's slots, private ones mangled."""
    names = []
    for owner in cls.__mro__:
        slots = owner.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            private = name.startswith("__") and not name.endswith("__")
            names.append(f"_{owner.__name__.lstrip('_')}{name}" if private else name)
    return type(value) is list and value == names


def library_folders() -> tuple[Path, ...]:
    """The folders of the ``LIBRARIES`` imported so far (only an imported library can have changed torch; looking
    up the others would be an import of theirs to anyone watching the import system)."""
    folders = []
    for name in LIBRARIES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        if origin:
            folders.append(Path(origin).resolve().parent)
    return tuple(folders)


def written_in(function: object, folders: tuple[Path, ...]) -> bool:
    """Whether ``function`` is a Python function whose code lies in one of ``folders``."""
    if not isinstance(function, FunctionType):
        return False
    path = Path(function.__code__.co_filename).resolve()
    return any(path.is_relative_to(folder) for folder in folders)


def done_by_a_library(new: object, old: object, folders: tuple[Path, ...]) -> bool:
    """Whether replacing ``old`` by ``new`` (``_UNSET``: a new attribute) is one of the oracle libraries' own
    changes: a function written in their packages that wraps the very object it replaced (its ``__wrapped__``,
    or a variable it closes over), or, for an attribute that was not there, any function of theirs.

    Importing torch._dynamo (as ``torch.compile``, torch.optim's first step, transformers, peft and bitsandbytes
    do) replaces ``torch.manual_seed`` with such a wrapper; the first ``torch.compile`` wraps
    ``nn.Module.__init__``; transformers adds ``nn.Module.smart_apply`` when it builds its first model. A
    submission's own function, even one passed through a torch decorator, wraps something else, and is still
    caught.
    """
    if not written_in(new, folders):
        return False
    if old is _UNSET or getattr(new, "__wrapped__", _UNSET) is old:
        return True
    return any(_cell_value(cell) is old for cell in new.__closure__ or ())


def _cell_value(cell: object) -> object:
    try:
        return cell.cell_contents  # type: ignore[attr-defined]
    except ValueError:  # an empty cell
        return _UNSET


class ObjectGuard:
    """The attributes of the guarded modules and classes as they were when the guard was made.

    A guarded class may gain no attribute (setting ``torch.Tensor.abs`` shadows the C method);
    a guarded module may (torch adds submodules as they are first imported). The oracle libraries' own
    changes (``done_by_a_library``), torch's markers (``TORCH_MARKERS``) and CPython's pickling cache
    (``pythons_slot_names``) are adopted, not reported.
    """

    def __init__(self) -> None:
        import pytest  # here, like torch in guarded_classes: the parent `lora-kata` process needs neither

        modules: list[ModuleType] = [math, builtins, pytest]
        modules += [sys.modules[name] for name in GUARDED_MODULES if name in sys.modules]
        modules += [module for name, module in sys.modules.items() if name.split(".")[0] in GRADER_PACKAGES and module]
        self.modules = {module: dict(vars(module)) for module in modules}
        self.classes = {cls: dict(vars(cls)) for cls in guarded_classes()}
        # Each owner's names and the identities of their values when last found untouched: a check that changed
        # nothing of an owner costs one comparison of these, not a look at each attribute (half the guard's time).
        self._untouched: dict[object, tuple[tuple, tuple]] = {}

    def replaced(self) -> list[str]:
        """Qualified names of the guarded attributes that are no longer the objects they were.

        The libraries' own changes are adopted into the record first: they are neither reported nor undone.
        """
        found: list[str] = []
        libraries = functools.cache(library_folders)  # looked up at the first change: most checks change nothing
        for owner, saved in [*self.modules.items(), *self.classes.items()]:
            now = vars(owner)
            # The saved objects stay alive in ``saved``, so an id seen there is never another object's.
            signature = (tuple(now), tuple(map(id, now.values())))
            if self._untouched.get(owner) == signature:
                continue
            reported = len(found)
            for name, value in saved.items():
                new = now.get(name, _UNSET)
                if new is value:
                    continue
                if done_by_a_library(new, value, libraries()):
                    saved[name] = new
                else:
                    found.append(f"{owner.__name__}.{name}")
            if owner in self.classes:
                for name in now.keys() - saved.keys():
                    if (
                        name in TORCH_MARKERS
                        or (name == "__slotnames__" and pythons_slot_names(owner, now[name]))
                        or done_by_a_library(now[name], _UNSET, libraries())
                    ):
                        saved[name] = now[name]
                    else:
                        found.append(f"{owner.__name__}.{name}")
            if len(found) == reported:
                self._untouched[owner] = signature
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


def fingerprint(*folders: Path) -> dict[Path, bytes]:
    """The contents of the grader's source and data files in ``folders``, to notice and undo edits."""
    suffixes = {".py", ".toml", ".txt"}
    return {path: path.read_bytes() for f in folders for path in sorted(f.rglob("*")) if path.suffix in suffixes}


def changed_files(before: dict[Path, bytes], *folders: Path) -> list[Path]:
    """Files of ``before`` whose contents differ now in ``folders`` (or that are gone)."""
    now = fingerprint(*folders)
    return [path for path, content in before.items() if now.get(path) != content]
