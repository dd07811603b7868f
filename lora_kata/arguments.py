"""Command-line arguments checked the same way by every command: kata names, output paths, positive numbers."""

from __future__ import annotations

import argparse
import difflib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from lora_kata.grading.implementation import GRADED
from lora_kata.terminal import UserError


def kata_names(names: Sequence[str] | None) -> list[str]:
    """The katas asked for, checked; a typo gets the nearest name."""
    for name in names or []:
        if name not in GRADED:
            nearest = difflib.get_close_matches(name, GRADED, n=1)
            hint = f": did you mean {nearest[0]}?" if nearest else f"; the katas are {', '.join(GRADED)}"
            raise UserError(f"unknown kata {name!r}{hint}")
    return list(names or [])


def writable(path: Path, what: str) -> Path:
    """``path``, after checking that a file can be written there, by writing one next to it (``os.access``
    says yes to root, and for /proc)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name")
    if not folder.is_dir():
        raise UserError(f"{what} {path}: the folder {folder} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: the file is read-only: give another path, or make it writable")
    writable_folder(folder, f"{what} {path}")
    return path


def writable_folder(folder: Path, what: str) -> Path:
    """``folder``, created if need be, after checking that a file can be written in it."""
    try:
        folder.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lora-kata-", suffix=".probe"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        message = f"{what}: cannot write in {folder} ({reason}): give a path in a folder you can write in"
        raise UserError(message) from None
    return folder


def positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'} above 0")
        return value

    return parse
