"""The clock: milliseconds since the epoch, injectable wherever time matters."""

from __future__ import annotations

import time
from collections.abc import Callable

#: A callable returning the current time in integer milliseconds since the epoch.
Clock = Callable[[], int]


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
