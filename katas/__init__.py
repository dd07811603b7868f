"""The katas: fill in each module, then grade it with `pytest grader/` (or `make grade`)."""
