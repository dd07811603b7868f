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
import math
import sys
from pathlib import Path
from types import ModuleType

GUARDED_MODULES = ("torch", "torch.nn", "torch.nn.functional", "torch.linalg", "torch.testing", "math", "builtins")
GRADER_PACKAGES = ("grader", "lora_kata")  # the checks and the engine that runs them
_UNSET = object()


class ObjectGuard:
    """The attributes of the guarded modules and classes as they were when the guard was made.

    A guarded class may gain no attribute (setting ``torch.Tensor.abs`` shadows the C method);
    a guarded module may (torch adds submodules as they are first imported).
    """

    def __init__(self) -> None:
        import pytest  # here, like torch in guarded_classes: the parent `lora-kata` process needs neither

        modules: list[ModuleType] = [math, builtins, pytest]
        modules += [sys.modules[name] for name in GUARDED_MODULES if name in sys.modules]
        modules += [module for name, module in sys.modules.items() if name.split(".")[0] in GRADER_PACKAGES and module]
        self.modules = {module: dict(vars(module)) for module in modules}
        self.classes = {cls: dict(vars(cls)) for cls in guarded_classes()}

    def replaced(self) -> list[str]:
        """Qualified names of the guarded attributes that are no longer the objects they were."""
        found = []
        for owner, saved in [*self.modules.items(), *self.classes.items()]:
            now = vars(owner)
            found += [
                f"{owner.__name__}.{name}"
                for name, value in saved.items()
                if now.get(name, _UNSET) is not value and not _wrapped_by_torch(now.get(name), value)
            ]
            if owner in self.classes:
                found += [f"{owner.__name__}.{name}" for name in now.keys() - saved.keys()]
        return found

    def restore(self) -> None:
        """Put every guarded attribute back as it was."""
        for owner, saved in [*self.modules.items(), *self.classes.items()]:
            for name, value in saved.items():
                now = vars(owner).get(name, _UNSET)
                if now is not value and not _wrapped_by_torch(now, value):
                    setattr(owner, name, value)
            if owner in self.classes:
                for name in vars(owner).keys() - saved.keys():
                    delattr(owner, name)


def _wrapped_by_torch(now: object, saved: object) -> bool:
    """Whether ``now`` is torch's own wrapper of ``saved``: importing torch._dynamo (transformers and peft do)
    wraps ``torch.manual_seed`` in torch/_compile.py's disable-dynamo wrapper. That is not the submission's doing."""
    code = getattr(now, "__code__", None)
    torch = sys.modules.get("torch")
    return (
        getattr(now, "__wrapped__", None) is saved
        and code is not None
        and torch is not None
        and Path(code.co_filename).parent == Path(torch.__file__).parent
    )


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
