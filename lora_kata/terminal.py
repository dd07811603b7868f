"""Terminal conventions: colour only on a terminal and never with NO_COLOR; errors as one line."""

from __future__ import annotations

import os
import sys
from typing import TextIO

COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


def is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is a terminal; None (the command was started with it closed) is not."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):  # a stand-in without isatty, or closed since
        return False


def paint(text: str, colour: str, stream: TextIO | None = None) -> str:
    """``text`` in ``colour`` when ``stream`` (default: stdout) is a terminal and NO_COLOR is unset."""
    if "NO_COLOR" in os.environ or not is_terminal(sys.stdout if stream is None else stream):
        return text
    return f"\033[{COLOURS[colour]}m{text}\033[0m"


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2."""
