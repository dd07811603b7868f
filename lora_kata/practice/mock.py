"""`mock`: a mock interview, several katas under one clock."""

from __future__ import annotations

import argparse

from lora_kata.grading.implementation import KATAS
from lora_kata.practice.checking import grade_against_the_clock
from lora_kata.practice.clock import clock
from lora_kata.practice.metadata import in_dependency_order, kata_info, practice_katas
from lora_kata.practice.sessions import budget, checked_kata, end_running_session, require_kata_file, restore
from lora_kata.practice.state import changing_state, load_state, new_session, working_copy
from lora_kata.terminal import UserError, paint

MOCK_MINUTES = 60.0
MOCK_DESCRIPTION = """\
A mock interview: several katas under one clock (default: every kata, each after the katas it
builds on, then the capstone, which grades them together). While it runs, `lora-kata check`
grades all of its katas (`check KATA` one of them), `watch` re-checks them on every save, and
hints and solutions shown are recorded with it. It ends by itself when every kata passes, or
with `lora-kata mock --finish`, which grades them one last time and prints the summary: each
kata's checks, when it was solved, the hints used."""


def mock(arguments: argparse.Namespace) -> int:
    root = working_copy()
    if arguments.finish:
        session = load_state(root).session
        if session is None or not session.mock:
            raise UserError("no mock interview running: start one with lora-kata mock")
        return grade_against_the_clock(root, session.katas, as_json=False, end_session=True)
    chosen = (
        [checked_kata(name).name for name in arguments.kata] if arguments.kata else [k.name for k in practice_katas()]
    )
    katas = in_dependency_order(chosen)
    minutes = budget(arguments.minutes, MOCK_MINUTES)
    if not arguments.fresh:
        for kata in katas:
            require_kata_file(root, kata)
    with changing_state(root) as state:
        end_running_session(state, arguments.yes, "start a mock interview")
        for kata in katas if arguments.fresh else []:
            if kata in KATAS:  # the capstone has no stub: it is graded over the others
                restore(root, state, kata)
        state.session = new_session(root, state, katas, minutes, mock=True)
    on_the_clock = clock(minutes * 60)
    print(paint(f"mock interview: {len(katas)} katas, {on_the_clock} on the clock; solve them in this order:", "bold"))
    for kata in katas:
        info = kata_info(kata)
        where = f"katas/{kata}.py" if kata in KATAS else "no file: your katas, graded together"
        print(f"  {kata:<16}{info.difficulty:<8}about {clock(info.minutes * 60)}   {where}")
    print("lora-kata check grades them all (check KATA one); lora-kata mock --finish ends it with a summary")
    if any(state.status.get(kata) == "passed" for kata in katas):
        note = "note: some of these pass already, and count as solved only once changed: --fresh starts from the stubs"
        print(paint(note, "yellow"))
    return 0
