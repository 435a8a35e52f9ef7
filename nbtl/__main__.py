import sys

from nbtl.cli import main

sys.exit(main())
