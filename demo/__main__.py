"""``python -m demo``: what ``arcctl demo`` runs (see :mod:`demo.cli`)."""

from __future__ import annotations

import sys

from demo.cli import main

sys.exit(main())
