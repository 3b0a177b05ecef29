"""Shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Child processes started by tests run the same interpreter and see the repo.
os.environ.setdefault("PYTHONPATH", str(ROOT))
