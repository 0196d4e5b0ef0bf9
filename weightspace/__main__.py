"""``python -m weightspace`` runs the command line."""

import sys

from weightspace.cli import main

sys.exit(main())
