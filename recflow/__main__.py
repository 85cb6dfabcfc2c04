"""``python -m recflow`` runs the recflow CLI (the same entry point as the ``recflow`` console script)."""

import sys

from recflow.cli import main

sys.exit(main())
