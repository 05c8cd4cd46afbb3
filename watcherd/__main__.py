"""`python -m watcherd` runs the command line."""

import sys

from watcherd.cli import main

sys.exit(main())
