"""``python -m stitch`` runs the command line."""

import sys

from stitch.cli import main

sys.exit(main())
