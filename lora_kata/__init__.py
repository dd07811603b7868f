"""lora-kata: the `lora-kata` command, the grading engine behind it, and timed practice.

- ``cli``: argument parsing and dispatch;
- ``grading``: finding and importing an implementation, running the checks of ``grader/`` on it in this
  process or in a capped child process, results, verdicts, the tamper guards;
- ``submissions``: `grade` and `batch`;
- ``practice``: timed sessions, hints, solutions, history, mock interviews;
- ``github``: `report`, GitHub annotations and job summary;
- ``arguments`` and ``terminal``: checked arguments, colours and one-line errors.
"""
