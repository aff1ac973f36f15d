"""``python -m masked_dora ...``: the masked-dora command line (see :mod:`masked_dora.cli`)."""

import sys

from .cli import main

sys.exit(main())
