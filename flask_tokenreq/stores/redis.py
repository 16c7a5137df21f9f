"""``redis://``, ``rediss://``, ``unix://``: nonces as Redis keys (``SET NX PX``)."""

from __future__ import annotations

import secrets
import threading
import weakref
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..clock import Clock, now_ms
from ..errors import ConfigError, StoreUnavailable
from .base import (
    CONNECT_TIMEOUT_S,
    SETTING,
    at_fork_in_child,
    claim_key,
    effective_expiry,
    logger,
    redact_url,
    unavailable,
)

__all__ = ["MIN_TTL_MS", "REDIS_KEY_PREFIX", "SOCKET_TIMEOUT_S", "RedisNonceStore"]

#: Prefix of every Redis key this module writes.
REDIS_KEY_PREFIX = "tokenreq:nonce:"
#: Seconds a Redis command may take before failing.
SOCKET_TIMEOUT_S = 2.0
#: Shortest real-time TTL given to a key, in milliseconds. Redis expires keys
#: on its own clock; the claim's liveness is judged on the injected clock from
#: the expiry stored in the value. The floor keeps a key that short claims
#: (an expiry at or before ``now``: 1 ms) would give Redis long enough to
#: outlive the time between reading the clock and Redis applying the command
#: (bounded by the socket timeout), so Redis never drops a claim that the
#: injected clock still holds live.
MIN_TTL_MS = 5_000


class RedisNonceStore:
    """Nonces as Redis keys: ``SET key value NX PX ttl``, expired by Redis itself.

    The key is ``tokenreq:nonce:<key_name>:<hex sha256(nonce)>`` (unambiguous:
    the digest has a fixed length and no ``:``). The value is
    ``<expires_at_ms>:<random token>``. The TTL is relative,
    ``expires_at_ms - now_ms() + 1`` on the injected clock (at least
    :data:`MIN_TTL_MS`), so a clock offset between the app and Redis (or a test
    clock) does not shorten or stretch a claim. When ``SET NX`` finds the key,
    the expiry stored in its value decides on the injected clock: a live claim
    refuses; an expired one is replaced under ``WATCH``/``MULTI``.
    """

    def __init__(self, url: str, *, now_ms: Clock = now_ms) -> None:
        self._now = now_ms
        self.url = redact_url(url)
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                # Retries are ours (one, on a dropped connection), so they stay exact.
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{SETTING}: invalid Redis URL {self.url!r}: {exc}") from None
        # One connection per thread for SET NX (see _set_nx); closed by close()
        # or when its thread ends (redis-py closes a collected connection).
        self._local = threading.local()
        self._thread_connections: weakref.WeakSet[Any] = weakref.WeakSet()
        at_fork_in_child(self, RedisNonceStore._after_fork)
        self._policy_checked = False
        self._check_eviction_policy()

    @classmethod
    def from_url(
        cls, url: str, *, now_ms: Clock = now_ms, instance_path: str | None = None
    ) -> RedisNonceStore:
        """The store for a ``redis://``, ``rediss://`` or ``unix://`` URL."""
        return cls(url, now_ms=now_ms)

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        digest = claim_key(key_name, nonce, expires_at_ms)
        key = f"{REDIS_KEY_PREFIX}{key_name}:{digest.hex()}".encode()
        token = secrets.token_hex(8)
        try:
            try:
                claimed = self._claim_once(key, expires_at_ms, token)
            except redis.ConnectionError:
                # A pooled connection may be stale (server restarted): one more
                # try on a fresh one. The token recognises our own earlier
                # write, should it have landed before the connection broke.
                claimed = self._claim_once(key, expires_at_ms, token)
        except Exception as exc:
            raise self._unavailable(exc) from exc
        if not self._policy_checked:
            self._check_eviction_policy()
        return claimed

    def _claim_once(self, key: bytes, expires_at_ms: int, token: str) -> bool:
        now = self._now()
        expiry = effective_expiry(expires_at_ms, now)
        ttl = max(expiry - now + 1, MIN_TTL_MS)  # live through expiry inclusive
        value = f"{expiry}:{token}".encode()
        if self._set_nx(key, value, ttl):
            return True
        # The key exists. Its stored expiry, on the injected clock, says whether
        # the claim is still live (or whether it is our own retried write).
        for _ in range(3):
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    current: Any = pipe.get(key)
                    if current is not None:
                        old_expiry, _, old_token = bytes(current).partition(b":")
                        if old_token == token.encode():
                            return True
                        try:
                            live = int(old_expiry) >= now
                        except ValueError:
                            live = True  # not ours to judge: fail closed
                        if live:
                            return False
                    pipe.multi()
                    pipe.set(key, value, px=ttl)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # the key changed under us: look again
        return False  # still contended after three looks: refuse (fail closed)

    def _set_nx(self, key: bytes, value: bytes, ttl_ms: int) -> bool:
        """``SET key value NX PX ttl_ms`` (what ``client.set(key, value, nx=True,
        px=ttl_ms)`` sends): whether the key was set.

        Sent on a connection of this thread's own, without the client's
        per-command layers: the pool checkout polls the socket for stale data
        (one more blocking call, so one more GIL hand-off in a threaded
        worker), then the retry wrapper and response callbacks. Measured on
        ``exchange_http_redis_vs_empty``: median +17 % over ten paired runs,
        worker CPU per exchange -10 % (docs/performance.md). Errors are the
        same redis-py exceptions; a connection that failed is closed and
        reconnects on its next use.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None:
            pool = self._client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            self._local.conn = conn
            self._thread_connections.add(conn)
        try:
            conn.send_command("SET", key, value, "NX", "PX", ttl_ms)
            response = conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        return response is not None  # OK when set; nil when the key exists

    def _after_fork(self) -> None:
        # Connections made in the parent (gunicorn --preload) stay the parent's.
        self._local = threading.local()
        self._thread_connections = weakref.WeakSet()

    def purge(self, now: int | None = None) -> int:
        """Nothing to do: Redis expires keys by itself. Returns 0."""
        return 0

    def ping(self) -> None:
        try:
            self._client.ping()
        except Exception as exc:
            raise self._unavailable(exc) from exc
        if not self._policy_checked:
            self._check_eviction_policy()

    def close(self) -> None:
        self._client.close()
        for conn in list(self._thread_connections):
            conn.disconnect()

    def __repr__(self) -> str:
        return f"RedisNonceStore({self.url!r})"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return unavailable("redis", self.url, exc)

    def _check_eviction_policy(self) -> None:
        """Warn unless ``maxmemory-policy`` is ``noeviction`` (evicted nonces could be replayed).

        CONFIG may be disabled (managed Redis): then say so at INFO and go on.
        When Redis is down, check again after the first successful command.
        """
        try:
            config = self._client.config_get("maxmemory-policy")
        except (redis.ConnectionError, redis.TimeoutError):
            return
        except redis.RedisError as exc:
            self._policy_checked = True
            logger.info(
                "nonce store %s: cannot read maxmemory-policy (%s); make sure it is "
                "noeviction, or nonces may be evicted early and replayed",
                self.url,
                exc,
            )
            return
        self._policy_checked = True
        policy = str(config.get("maxmemory-policy", "")) if config else ""
        if policy != "noeviction":
            logger.warning(
                "nonce store %s: Redis maxmemory-policy is %r, not 'noeviction': under "
                "memory pressure Redis may evict nonces before they expire, letting a "
                "TokenRequest be replayed. Set maxmemory-policy noeviction.",
                self.url,
                policy or "unknown",
            )
