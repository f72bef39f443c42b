"""What every export stage shares: the two errors the command turns into exit codes, and the log."""

from __future__ import annotations

import sys


class UsageError(Exception):
    """Bad input: exit 2 with one line."""


class GateError(Exception):
    """The exported bundle's vectors drift too far from PyTorch: exit 1 with one line."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
