"""Waiting for a save: notice when a kata module changes, and keep a status line up to date meanwhile.

`lora-kata watch` uses it between checks. With watchfiles installed a save wakes it at once, else it
looks twice a second; on a terminal the status line is drawn by rich when installed, else by hand.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_kata.terminal import is_terminal


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Modification time (ns) and size of each kata module in ``folder``."""
    found = {}
    for path in folder.glob("*.py"):
        with contextlib.suppress(FileNotFoundError):
            status = path.stat()
            found[path.name] = (status.st_mtime_ns, status.st_size)
    return found


def wait_for_save(folder: Path, before: dict[str, tuple[int, int]], status: Callable[[], str]) -> None:
    """Return once a kata module in ``folder`` differs from ``before``; show ``status()`` meanwhile on a terminal."""
    with _status_line(status) as refresh:
        for _ in _wakeups(folder):
            if snapshot(folder) != before:
                return
            refresh()


def _wakeups(folder: Path) -> Iterator[None]:
    """Yields twice a second, and at once when something in ``folder`` changes (with watchfiles installed)."""
    try:
        import watchfiles
    except ImportError:
        while True:
            time.sleep(0.5)
            yield
    else:
        for _ in watchfiles.watch(folder, debounce=100, rust_timeout=500, yield_on_timeout=True):
            yield


@contextmanager
def _status_line(status: Callable[[], str]) -> Iterator[Callable[[], None]]:
    """A line showing ``status()``, kept up to date on a terminal (by rich when installed); none elsewhere."""
    if not is_terminal(sys.stdout):
        yield lambda: None
        return
    try:
        from rich.live import Live
        from rich.text import Text
    except ImportError:
        try:
            yield lambda: print(f"\r{status()}\033[K", end="", flush=True)
        finally:
            print()
        return
    with Live(get_renderable=lambda: Text(status()), refresh_per_second=2, transient=True):
        yield lambda: None  # Live refreshes itself
