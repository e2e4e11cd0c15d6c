"""``python -m ttg``: the same as the ``ttg`` command."""

import sys

from ttg.cli import main

sys.exit(main())
