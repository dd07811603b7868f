"""A learner's first session, typed into a real terminal (tmux): start, check a failing stub, hint, fix, check,
history. Here stdout is a terminal, so this is also where colour must show."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_practice import T0, make_working_copy

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")

COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class Terminal:
    """A shell in a detached tmux session on a private server; ``type`` runs one command line in it."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.typed = 0
        self._tmux("new-session", "-d", "-s", "learner", "-x", "200", "-y", "50", "bash --norc --noprofile")

    def _tmux(self, *arguments: str) -> str:
        command = ["tmux", "-L", self.socket, *arguments]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout

    def type(self, line: str, timeout: float = 120) -> tuple[int, str]:
        """Type ``line`` and Enter; wait for it to finish; its exit code and its screen output (colours kept)."""
        self.typed += 1
        # printf's format in the typed line differs from what it prints, so the typed line never matches.
        self._tmux("send-keys", "-t", "learner", "-l", f"{line}; printf '%s:%s\\n' done{self.typed} $?")
        self._tmux("send-keys", "-t", "learner", "Enter")
        marker = re.compile(rf"^done{self.typed}:(\d+)$", re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self._tmux("capture-pane", "-p", "-e", "-J", "-S", "-", "-t", "learner")
            found = marker.search(COLOUR.sub("", screen))
            if found:
                start = screen.rfind(f"done{self.typed - 1}:") if self.typed > 1 else 0
                return int(found.group(1)), screen[start : screen.rfind(f"done{self.typed}:")]
            time.sleep(0.2)
        pytest.fail(f"{line!r} did not finish in {timeout:g} s; the terminal shows:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def terminal(tmp_path: Path):
    terminal = Terminal(f"lora-kata-test-{tmp_path.name}")
    yield terminal
    terminal.close()


def test_first_session_in_a_terminal(tmp_path, terminal):
    root = make_working_copy(tmp_path / "copy")
    shutil.copy(root / "solutions" / "lora_linear.py", root / "katas" / "lora_linear.py")  # merge_weights builds on it
    command = Path(sys.executable).parent / "lora-kata"
    lora_kata = shlex.quote(str(command)) if command.exists() else f"{shlex.quote(sys.executable)} -m lora_kata"
    terminal.type(f"cd {shlex.quote(str(root))} && export LORA_KATA_ROOT=$PWD && unset NO_COLOR")

    code, screen = terminal.type(f"LORA_KATA_NOW={T0:.0f} {lora_kata} start merge_weights")
    assert code == 0 and "started merge_weights (medium): 20:00 on the clock" in COLOUR.sub("", screen)

    code, screen = terminal.type(f"LORA_KATA_NOW={T0 + 240:.0f} {lora_kata} check")
    plain = COLOUR.sub("", screen)
    assert code == 1, plain
    assert "FAIL replaces every adapter by a plain linear: not implemented yet: kata merge_weights" in plain, plain
    assert "time 4:00 of 20:00, 16:00 left" in plain
    assert re.search(r"\x1b\[[0-9;]*31mFAIL", screen), "FAIL is red on a terminal"

    code, screen = terminal.type(f"LORA_KATA_NOW={T0 + 300:.0f} {lora_kata} hint")
    assert code == 0 and "hint 1/3: Merging computes W + scaling * B @ A" in COLOUR.sub("", screen)

    terminal.type("cp solutions/merge_weights.py katas/merge_weights.py")
    code, screen = terminal.type(f"LORA_KATA_NOW={T0 + 480:.0f} {lora_kata} check")
    plain = COLOUR.sub("", screen)
    assert code == 0, plain
    assert "FAIL" not in plain and "solved merge_weights in 8:00 with 1 hint" in plain

    code, screen = terminal.type(f"LORA_KATA_NOW={T0 + 600:.0f} NO_COLOR=1 {lora_kata} history")
    assert code == 0 and "\x1b[" not in screen.split("history\n", 1)[-1], "NO_COLOR is respected"
    row = next(line for line in screen.splitlines() if "merge_weights" in line and "solved" in line)
    assert row.split()[3:] == ["8:00", "20:00", "1", "solved"], row
    assert re.search(r"^merge_weights +█ +8:00$", screen, re.MULTILINE), screen
