"""The project's own tests: they prove the grader right against right and wrong implementations."""
