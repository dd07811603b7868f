"""Command-line arguments checked the same way by every command: kata names, output paths, positive numbers."""

from __future__ import annotations

import argparse
import difflib
import os
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
    """``path``, after checking that a file can be written there."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name")
    if not folder.is_dir():
        raise UserError(f"{what} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{what} {path}: cannot write in {folder}")
    return path


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
