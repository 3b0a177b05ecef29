"""`arc-relay` command line (placeholder until the end-to-end issue lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("arc-relay: not yet available (arrives with the end-to-end issue)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
