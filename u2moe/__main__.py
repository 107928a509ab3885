"""`python -m u2moe ...` (what torchrun launches) is the same as `u2moe ...`."""

import sys

from u2moe.cli import main

sys.exit(main())
