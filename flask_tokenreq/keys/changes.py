"""A key-change counter in shared memory, beside a SQLite key store.

The token guard must see a key change from the moment the call that made it
returns, in every process (``docs/keys.md``, Caching). On PostgreSQL it
reads the ``tokenreq_generation`` row on every guarded request. On SQLite,
whose WAL mode already ties every process that opens the database to this
host's shared memory (its ``-shm`` file), that read costs more than the rest
of the guard under gunicorn's threads (``sqlite3`` releases the GIL around
each step). This counter, an 8-byte file mapped into every process, says the
same thing for the price of a memory read:

- a change makes it odd before its transaction begins and even (higher)
  after the commit, holding a lock (a ``threading.Lock`` and a POSIX record
  lock on the file) from the first to the second;
- a reader that finds it even and equal to the value it read before it last
  read the database knows that no change has begun since: what it read then
  is still current. Odd (a change in progress, or a process that died in
  the middle of one) means: read the database, as without the counter.

The value is read and written as one native, aligned 8-byte word (a single
load or store on 64-bit platforms: never half old, half new); on other
platforms :func:`supported` is false and the key store reads the database.
Like SQLite's own ``-wal`` and ``-shm`` files, the file must not be deleted
while an app has the database open.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator

from ..stores.base import at_fork_in_child

__all__ = ["SUFFIX", "ChangeCounter", "supported"]

#: What is appended to the database file's path to name the counter's file.
SUFFIX = "-tokenreq-changes"
_SIZE = 8
#: Native: struct copies the word with one memcpy (one load or store), where the
#: standard sizes ("<Q") go byte by byte.
_FORMAT = "Q"


def supported() -> bool:
    """Whether a native 8-byte word is read and written at once here (64-bit)."""
    return struct.calcsize("P") == _SIZE and struct.calcsize(_FORMAT) == _SIZE


class ChangeCounter:
    """The counter in the file at ``path`` (created, mode 0600, when missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                # Under the lock: two processes creating it at once both see 0.
                fcntl.lockf(fd, fcntl.LOCK_EX)
                try:
                    if os.fstat(fd).st_size < _SIZE:
                        os.ftruncate(fd, _SIZE)
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._lock = threading.Lock()
        at_fork_in_child(self, ChangeCounter._after_fork)

    def _after_fork(self) -> None:
        # A forked child holds none of its parent's record locks; a lock taken
        # by another thread of the parent would never be released here.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ChangeCounter({self.path!r})"

    def read(self) -> int:
        """The current value: even when no change is in progress."""
        return int(struct.unpack_from(_FORMAT, self._map)[0])

    def _write(self, value: int) -> None:
        struct.pack_into(_FORMAT, self._map, 0, value)

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Around a change's transaction: odd during it, even and higher after it
        (also after a failed one: readers then only read the database once more)."""
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                value = self.read()
                # An odd value left by a process that died mid-change: step over it.
                value += 1 if value % 2 == 0 else 2
                self._write(value)
                try:
                    yield
                finally:
                    self._write(value + 1)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap and close the file (the counter's value stays in it)."""
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
