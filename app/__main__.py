"""``python -m app ...`` is the ``tuner`` console script (used to start embedded workers)."""

import sys

from app.cli import main

sys.exit(main())
