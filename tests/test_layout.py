"""The tree keeps one wing per job: imports go from the command to practice and reporting to the grading
engine, never back, and the checks in grader/ use only the engine and their own helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.implementations import REPOSITORY

# Each wing of the code, and the wings it may import from.
MAY_IMPORT = {
    "lora_kata.cli": {"lora_kata.submissions", "lora_kata.practice", "lora_kata.github", "lora_kata.grading"},
    "lora_kata.submissions": {"lora_kata.grading"},
    "lora_kata.github": {"lora_kata.grading"},
    "lora_kata.practice": {"lora_kata.grading"},
    "lora_kata.grading": set(),
    "grader": {"lora_kata.grading"},
}
SHARED = {"lora_kata.terminal", "lora_kata.arguments"}  # leaves every wing but the engine may use


def wing(module: str) -> str | None:
    return next(
        (w for w in sorted(MAY_IMPORT, key=len, reverse=True) if module == w or module.startswith(w + ".")), None
    )


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name for name in found if name.split(".")[0] in {"lora_kata", "grader"}}


SOURCES = sorted([*(REPOSITORY / "lora_kata").rglob("*.py"), *(REPOSITORY / "grader").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_imports_go_one_way(path):
    own = wing(module_name(path))
    if own is None:  # lora_kata/__init__, __main__, terminal, arguments: the leaves and the entry point
        return
    for name in imports(path):
        target = wing(name)
        allowed = target in (own, None) or target in MAY_IMPORT[own] or name in SHARED or name == "lora_kata"
        if own == "lora_kata.grading":
            allowed = target == own  # the engine stands alone
        assert allowed, f"{module_name(path)} imports {name}: {own} may import only {sorted(MAY_IMPORT[own])}"


def test_every_module_is_in_a_wing_or_a_shared_leaf():
    top = {module_name(path) for path in (REPOSITORY / "lora_kata").glob("*.py")}
    assert (
        top
        == {"lora_kata", "lora_kata.__main__", "lora_kata.cli", "lora_kata.submissions", "lora_kata.github"} | SHARED
    )
