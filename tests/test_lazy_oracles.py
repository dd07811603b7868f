"""The oracles (transformers, peft, bitsandbytes) are imported only by the checks that need them: `lora-kata check`
of a kata that uses none of them never imports them, in any of its processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_practice import make_working_copy, solve

ORACLES = ("transformers", "peft", "bitsandbytes")
# Started by every Python process that has this folder on PYTHONPATH: logs each first import of an oracle.
HOOK = f"""
import os, sys

class OracleLog:
    def find_spec(self, name, path=None, target=None):
        if name in {ORACLES!r}:
            with open(os.environ["ORACLE_IMPORT_LOG"], "a") as log:
                log.write(f"{{os.getpid()}} {{name}} {{sys.argv[:2]}}\\n")
        return None

sys.meta_path.insert(0, OracleLog())
"""


def check_logging_oracle_imports(tmp_path: Path, kata: str) -> tuple[subprocess.CompletedProcess[str], str]:
    hook, log = tmp_path / "hook", tmp_path / f"{kata}.log"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    root = tmp_path / "copy"
    if not root.exists():
        make_working_copy(root)
        solve(root, "lora_linear", "masked_prompt")
    environment = {**os.environ, "LORA_KATA_ROOT": str(root), "ORACLE_IMPORT_LOG": str(log),
                   "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-m", "lora_kata", "check", kata], cwd=root, env=environment,
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return completed, log.read_text() if log.exists() else ""


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the control needs transformers")
def test_check_lora_linear_never_imports_an_oracle(tmp_path):
    completed, imported = check_logging_oracle_imports(tmp_path, "lora_linear")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert imported == "", f"lora-kata check lora_linear imported an oracle: {imported}"
    # The control: the same log sees transformers where a check needs it (masked_prompt's tokenizer case).
    completed, imported = check_logging_oracle_imports(tmp_path, "masked_prompt")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert " transformers " in imported, "the import log missed the transformers that masked_prompt's checks use"
