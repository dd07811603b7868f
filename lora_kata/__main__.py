"""`python -m lora_kata` is the `lora-kata` command."""

import sys

from lora_kata.cli import main

sys.exit(main())
