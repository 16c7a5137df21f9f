"""``memory://``: nonces in a dict of this process (tests, one-process servers)."""

from __future__ import annotations

import heapq
import threading

from ..clock import Clock, now_ms
from .base import SETTING, at_fork_in_child, claim_key, effective_expiry, logger

__all__ = ["MemoryNonceStore"]


class MemoryNonceStore:
    """Nonces in a dict of this process: for tests and single-process servers.

    Each worker process has its own dict, so with N workers a TokenRequest
    could be exchanged up to N times; a warning is logged on creation.
    Expired entries are purged from a heap keyed on expiry, a bounded number
    per claim, so memory follows the live set, not the total claimed.
    """

    #: At most this many expired entries are dropped per claim.
    PURGE_PER_CLAIM = 1000

    def __init__(self, *, now_ms: Clock = now_ms, warn: bool = True) -> None:
        self._now = now_ms
        self._lock = threading.Lock()
        self._live: dict[tuple[str, bytes], int] = {}
        self._heap: list[tuple[int, str, bytes]] = []
        if warn:
            logger.warning(
                "%s=memory:// keeps nonces in this process only: with several worker "
                "processes or hosts a TokenRequest can be replayed once per process. "
                "Use the SQLite default (one host) or redis:// (several hosts) in production.",
                SETTING,
            )
        at_fork_in_child(self, MemoryNonceStore._reset_lock)

    @classmethod
    def from_url(
        cls, url: str, *, now_ms: Clock = now_ms, instance_path: str | None = None
    ) -> MemoryNonceStore:
        """The store for ``memory://`` (the rest of the URL is ignored)."""
        return cls(now_ms=now_ms)

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        entry = (key_name, claim_key(key_name, nonce, expires_at_ms))
        with self._lock:
            now = self._now()
            self._drop_expired(now, self.PURGE_PER_CLAIM)
            current = self._live.get(entry)
            if current is not None and current >= now:
                return False
            expiry = effective_expiry(expires_at_ms, now)
            self._live[entry] = expiry
            heapq.heappush(self._heap, (expiry, *entry))
            return True

    def purge(self, now: int | None = None) -> int:
        """Drop every entry expired at ``now`` (default: the injected clock); how many."""
        with self._lock:
            return self._drop_expired(self._now() if now is None else now, None)

    def _drop_expired(self, now: int, limit: int | None) -> int:
        """Drop entries whose claim expired before ``now``: all, or up to ``limit`` heap items."""
        heap, live = self._heap, self._live
        dropped = popped = 0
        while heap and heap[0][0] < now and (limit is None or popped < limit):
            popped += 1
            expiry, key_name, digest = heapq.heappop(heap)
            entry = (key_name, digest)
            # A re-claimed entry has a newer expiry; its old heap item is stale.
            if live.get(entry) == expiry:
                del live[entry]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        """Entries held (live ones plus expired ones not yet purged)."""
        with self._lock:
            return len(self._live)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "MemoryNonceStore()"
