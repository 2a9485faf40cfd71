"""``python -m repact ...`` (and ``torchrun -m repact train ...``)."""

import sys

from .cli import main

sys.exit(main())
