"""The oracle libraries the checks compare with (transformers, peft, safetensors, bitsandbytes), imported while
the checks that need them are collected.

A check module that needs one says so at its top, ``pytestmark = requires("transformers", "peft")`` (or
``load(...)`` where its checks skip on their own): the library is imported there and then, so the seconds that
takes count against no check's time limit, and what it changes of torch on import is in place before the tamper
guard records torch. Where a library is not installed, each check marked with ``requires`` skips with one line
saying what to install. A kata whose checks need no oracle never imports one, so it grades as fast as before.

A name may be ``package:attribute`` (``transformers:LlamaForCausalLM``): transformers imports its models lazily,
on first use, and that import is seconds too.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from types import ModuleType

import pytest


def installed(package: str) -> bool:
    """Whether the top-level ``package`` can be imported (found without importing it)."""
    return importlib.util.find_spec(package) is not None


def missing(package: str) -> str:
    """The one line a check that needs ``package`` skips with."""
    return f"{package} is not installed: pip install {package} (or -e '.[test]') to grade this kata"


def optional(name: str) -> ModuleType | None:
    """The module ``name`` (or, for ``module:attribute``, that module once the attribute is loaded), imported now;
    None where its package is not installed or does not import (a broken install): the checks that need it skip."""
    module, _, attribute = name.partition(":")
    if not installed(module.partition(".")[0]):
        return None
    try:
        with warnings.catch_warnings():  # deprecation notes of the libraries' own imports are no verdict
            warnings.simplefilter("ignore")
            imported = importlib.import_module(module)
            if attribute:
                getattr(imported, attribute)
    except Exception:
        return None
    return imported


def load(*names: str) -> None:
    """``optional`` for each of ``names``: import what is installed, now."""
    for name in names:
        optional(name)


def requires(*names: str) -> list[pytest.MarkDecorator]:
    """``load(*names)``, and one mark per package that skips a check, with one line, where it is not installed."""
    load(*names)
    packages = dict.fromkeys(name.partition(":")[0].partition(".")[0] for name in names)
    return [pytest.mark.skipif(not installed(package), reason=missing(package)) for package in packages]
