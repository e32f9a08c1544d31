"""`python -m costproc` runs the command line."""

import sys

from costproc.cli import main

sys.exit(main())
