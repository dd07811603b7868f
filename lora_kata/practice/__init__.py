"""Timed practice: sessions on a kata under a clock, checks, hints, solutions, history, mock interviews.

A session puts one kata (or, in a mock interview, several) under a clock with a time budget. `check`
grades in a separate process; the first time every check of a session's kata passes, that kata is
solved at that time, and a session whose katas are all solved goes to the history. Nothing here
waits for input unless stdin is a terminal.

- ``sessions``: starting, ending and resetting sessions, and the helpers the commands share;
- ``checking``: `check` and `watch`, grading against the clock;
- ``hints``: `hint` and `solution`;
- ``progress``: `list` and `history`, with its chart of solve times;
- ``mock``: mock interviews;
- ``clock``, ``state``, ``metadata`` (and ``katas.toml``), ``watching``: what they stand on.
"""
