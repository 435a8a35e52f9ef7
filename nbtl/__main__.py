"""``python -m nbtl``: the same as the ``nbtl`` command."""

import sys

from nbtl.cli import main

sys.exit(main())
