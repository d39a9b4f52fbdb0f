"""``python -m sagan``: the same as the ``sagan`` command."""

import sys

from .cli import main

sys.exit(main())
