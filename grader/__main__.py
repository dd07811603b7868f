"""`python -m grader` is the `lora-kata` command."""

import sys

from grader.cli import main

sys.exit(main())
