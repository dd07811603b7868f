"""What practice knows about each kata (title, difficulty, time budget, prerequisites, hints), from katas.toml.

The capstone is practised like a kata, but has no module of its own: it is graded over the modules of the
katas it builds on (``modules_of``)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lora_kata.grading.implementation import GRADED, KATAS
from lora_kata.terminal import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

METADATA = Path(__file__).resolve().parent / "katas.toml"
DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class KataInfo:
    """One kata's practice metadata; ``minutes`` is its time budget, ``hints`` go from a nudge to nearly the answer."""

    name: str
    title: str
    difficulty: str
    minutes: float
    depends_on: tuple[str, ...]
    hints: tuple[str, ...]


@functools.cache
def _metadata() -> dict[str, KataInfo]:
    """Every kata of katas.toml, checked; a broken file is a one-line error naming the kata."""
    try:
        document = tomllib.loads(METADATA.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UserError(f"{METADATA} could not be read ({error}): restore it from git") from None
    katas = {}
    for name, table in document.items():
        try:
            info = KataInfo(
                name,
                str(table["title"]),
                str(table["difficulty"]),
                float(table["minutes"]),
                tuple(map(str, table["depends_on"])),
                tuple(map(str, table["hints"])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{METADATA}: [{name}] lacks or mistypes {error}: see the other katas' tables") from None
        if info.difficulty not in DIFFICULTIES or info.minutes <= 0 or not info.hints:
            raise UserError(f"{METADATA}: [{name}] needs a difficulty in {DIFFICULTIES}, minutes > 0 and hints")
        if name in GRADED and any(d not in KATAS[: GRADED.index(name)] for d in info.depends_on):
            raise UserError(f"{METADATA}: [{name}] may depend only on katas before it in {KATAS}")
        katas[name] = info
    return katas


def practice_katas() -> list[KataInfo]:
    """The katas that can be practised (graded and described), in the grader's order: the capstone last."""
    return [_metadata()[name] for name in GRADED if name in _metadata()]


def kata_info(name: str) -> KataInfo:
    """The metadata of ``name``, a kata the grader knows; a one-line error when katas.toml lacks it."""
    if name not in _metadata():
        raise UserError(f"{name} has no practice metadata: add a [{name}] table to {METADATA}")
    return _metadata()[name]


def in_dependency_order(names: Iterable[str]) -> list[str]:
    """``names`` without repeats, each after the katas it depends on (the grader's order guarantees it)."""
    return sorted(set(names), key=GRADED.index)


def modules_of(name: str) -> tuple[str, ...]:
    """The kata modules ``name`` is graded over: its own, or, for the capstone, those of the katas it builds on."""
    return (name,) if name in KATAS else kata_info(name).depends_on
