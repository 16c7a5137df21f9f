"""The clock: milliseconds since the epoch, injectable wherever time matters.

Everything that needs the time takes a ``now_ms`` callable and defaults to
:func:`now_ms`. Tests replace the clock of one object by passing their own,
or of the whole process with :func:`override` (what the ``tokenreq_clock``
pytest fixture does), so issuers and providers built without an explicit
clock follow the test's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: A callable returning the current time in integer milliseconds since the epoch.
Clock = Callable[[], int]

_override: Clock | None = None


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch (or the override's)."""
    if _override is not None:
        return _override()
    return time.time_ns() // 1_000_000


@contextmanager
def override(clock: Clock) -> Iterator[Clock]:
    """Make :func:`now_ms` answer ``clock()`` in this process until the block ends."""
    global _override
    previous, _override = _override, clock
    try:
        yield clock
    finally:
        _override = previous
