"""Nonce stores: remember each TokenRequest nonce so it is accepted once.

The provider claims a TokenRequest's nonce after its MAC verified. A
:class:`NonceStore` answers ``True`` the first time ``(key_name, nonce)`` is
claimed and ``False`` while that claim is live, i.e. up to and including its
``expires_at_ms``; afterwards the pair may be claimed again. The check and the
write are one atomic step in every backend, and every backend failure raises
:class:`~flask_tokenreq.errors.StoreUnavailable`, so a broken store refuses
requests instead of accepting replays.

Backends, chosen by the ``TOKENREQ_NONCE_STORE`` URL (see ``docs/nonces.md``):

- ``memory://``: a dict in this process (tests, one-process servers only);
- any SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``): a table with a
  primary key on ``(key_name, nonce)``, claimed by one upsert statement;
- ``redis://``, ``rediss://``, ``unix://``: ``SET key value NX PX ttl``.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from .clock import Clock, now_ms
from .errors import ConfigError, StoreUnavailable
from .tokenrequest import random_bytes

if TYPE_CHECKING:  # pragma: no cover
    import redis

__all__ = [
    "SETTING",
    "MemoryNonceStore",
    "NonceStore",
    "RedisNonceStore",
    "SqlNonceStore",
    "default_nonce_store_url",
    "nonce_metadata",
    "nonces_table",
    "open_nonce_store",
    "redact_url",
]

logger = logging.getLogger("flask_tokenreq")

#: The setting that selects the backend; named in configuration errors.
SETTING = "TOKENREQ_NONCE_STORE"
#: File name of the default SQLite store inside the app's instance folder.
DEFAULT_SQLITE_FILENAME = "tokenreq-nonces.sqlite3"
#: Prefix of every Redis key this module writes.
REDIS_KEY_PREFIX = "tokenreq:nonce:"
#: Longest accepted key name (the SQL column is ``VARCHAR(255)``).
MAX_KEY_NAME_LENGTH = 255

#: Seconds to wait for a TCP connection (PostgreSQL, Redis) before failing.
CONNECT_TIMEOUT_S = 2
#: Seconds a Redis command may take before failing.
SOCKET_TIMEOUT_S = 2.0
#: Milliseconds a PostgreSQL statement (including lock waits) may take.
STATEMENT_TIMEOUT_MS = 5000
#: Milliseconds SQLite waits for another connection's write lock.
SQLITE_BUSY_TIMEOUT_MS = 5000

_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "pwd", "secret", "token"})

_T = TypeVar("_T")
_sha256 = hashlib.sha256
_heappush = heapq.heappush


@runtime_checkable
class NonceStore(Protocol):
    """What the provider needs from a nonce store."""

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        """Claim ``(key_name, nonce)`` atomically.

        ``True`` the first time; ``False`` while an earlier claim is live (up to
        and including its ``expires_at_ms``, on the store's injected clock).
        A backend failure raises :class:`StoreUnavailable`, never ``True``.
        """
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the backend cannot be used."""
        ...

    def close(self) -> None:
        """Release connections (idempotent)."""
        ...


# --------------------------------------------------------------------------
# Helpers shared by the backends


def redact_url(url: str) -> str:
    """``url`` with its password (and password-like query values) replaced by ``***``.

    Used in every message and log line, so a store URL never leaks a secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        if sep:
            netloc = f"{user}:***@{hostport}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret: unchanged (urlunsplit would drop an empty "//")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _check_args(key_name: object, nonce: object, expires_at_ms: object) -> None:
    """Reject arguments of the wrong type or shape before touching a backend."""
    if (
        type(key_name) is str
        and type(nonce) is str
        and type(expires_at_ms) is int
        and nonce
        and 0 < len(key_name) <= MAX_KEY_NAME_LENGTH
        and key_name.isascii()
        and "\x00" not in key_name
    ):
        return  # the common case: every check below passes
    if not isinstance(key_name, str):
        raise TypeError(f"key_name must be a str, got {type(key_name).__name__}")
    if not isinstance(nonce, str):
        raise TypeError(f"nonce must be a str, got {type(nonce).__name__}")
    if isinstance(expires_at_ms, bool) or not isinstance(expires_at_ms, int):
        raise TypeError(f"expires_at_ms must be an int, got {type(expires_at_ms).__name__}")
    if not key_name or len(key_name) > MAX_KEY_NAME_LENGTH:
        raise ValueError(f"key_name must have 1 to {MAX_KEY_NAME_LENGTH} characters")
    if "\x00" in key_name:
        raise ValueError("key_name must not contain NUL")
    try:
        key_name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("key_name must be valid Unicode (no lone surrogates)") from None
    if not nonce:
        raise ValueError("nonce must not be empty")


def _nonce_digest(nonce: str) -> bytes:
    """SHA-256 of the nonce: a fixed-size, any-character-safe storage key.

    Nonces come from clients; hashing bounds the size of what is stored and
    indexed and makes NUL, lone surrogates and ``:`` harmless.
    """
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).digest()


def _effective_expiry(expires_at_ms: int, now: int) -> int:
    """The claim's last live millisecond: never before ``now``.

    An expiry already in the past still blocks a second claim in the same
    millisecond, and Redis gets a positive TTL.
    """
    return expires_at_ms if expires_at_ms > now else now


def _describe(exc: BaseException) -> str:
    """One line for logs: the exception type and the driver's own message."""
    cause = getattr(exc, "orig", None) if isinstance(exc, sa.exc.DBAPIError) else None
    text = " ".join(str(cause if cause is not None else exc).split())
    return f"{type(exc).__name__}: {text}"


def _at_fork_in_child(obj: _T, action: Callable[[_T], None]) -> None:
    """Run ``action(obj)`` in a forked child while ``obj`` is alive.

    For gunicorn ``--preload``: connections and locks made in the master must
    not be shared with the workers.
    """
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - not POSIX
        return
    ref = weakref.ref(obj)

    def after_in_child() -> None:
        target = ref()
        if target is not None:
            action(target)

    os.register_at_fork(after_in_child=after_in_child)


# --------------------------------------------------------------------------
# memory://


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
        _at_fork_in_child(self, MemoryNonceStore._reset_lock)

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        _check_args(key_name, nonce, expires_at_ms)
        digest = _sha256(nonce.encode("utf-8", "surrogatepass")).digest()  # _nonce_digest
        entry = (key_name, digest)
        with self._lock:
            now = self._now()
            heap = self._heap
            if heap and heap[0][0] < now:
                self._purge(now)
            live = self._live
            current = live.get(entry)
            if current is not None and current >= now:
                return False
            expiry = expires_at_ms if expires_at_ms > now else now  # _effective_expiry
            live[entry] = expiry
            _heappush(heap, (expiry, key_name, digest))
            return True

    def _purge(self, now: int) -> None:
        heap, live = self._heap, self._live
        for _ in range(self.PURGE_PER_CLAIM):
            if not heap or heap[0][0] >= now:
                return
            expiry, key_name, digest = heapq.heappop(heap)
            entry = (key_name, digest)
            # A re-claimed entry has a newer expiry; its old heap item is stale.
            if live.get(entry) == expiry:
                del live[entry]

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


# --------------------------------------------------------------------------
# SQL (SQLAlchemy): SQLite, PostgreSQL, others

#: Metadata holding :data:`nonces_table` (for migrations or ``create_all``).
nonce_metadata = sa.MetaData()

#: One row per live claim. ``nonce`` holds the hex SHA-256 of the nonce.
nonces_table = sa.Table(
    "tokenreq_nonces",
    nonce_metadata,
    sa.Column("key_name", sa.String(MAX_KEY_NAME_LENGTH), primary_key=True),
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_tokenreq_nonces_expires_at", "expires_at"),
    sqlite_with_rowid=False,
)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings: wait for locks, WAL for concurrent workers."""
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _postgres_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection PostgreSQL settings: a statement (or lock wait) cannot hang."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    finally:
        cursor.close()
    # A plain SET inside a transaction that is later rolled back is undone.
    dbapi_connection.commit()


def _sql_url(url: str, instance_path: str | None) -> sa.URL:
    """Parse a SQLAlchemy URL, map ``postgres(ql)://`` to psycopg 3, place relative SQLite files."""
    try:
        u = sa.make_url(url)
    except Exception:
        raise ConfigError(f"{SETTING}: cannot parse the URL {redact_url(url)!r}") from None
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "sqlite":
        database = u.database or ""
        if (
            database in ("", ":memory:")
            or "mode=memory" in database
            or u.query.get("mode") == "memory"
        ):
            raise ConfigError(
                f"{SETTING}: an in-memory SQLite database is not shared between connections; "
                "use a file (sqlite:///path) or memory://"
            )
        if not database.startswith("file:") and not os.path.isabs(database) and instance_path:
            database = os.path.join(instance_path, database)
            # A failure here shows as StoreUnavailable when the file cannot be opened.
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(database), exist_ok=True)
            u = u.set(database=database)
    return u


def _upsert_statement(backend: str) -> Any:
    """The claim statement (see :class:`SqlNonceStore`), with bind parameters
    ``key_name``, ``nonce``, ``expires_at`` and ``now``."""
    t = nonces_table
    dialect_insert = pg_dialect.insert if backend == "postgresql" else sqlite_dialect.insert
    ins = dialect_insert(t).values(
        key_name=sa.bindparam("key_name"),
        nonce=sa.bindparam("nonce"),
        expires_at=sa.bindparam("expires_at"),
    )
    return ins.on_conflict_do_update(
        index_elements=[t.c.key_name, t.c.nonce],
        set_={"expires_at": ins.excluded.expires_at},
        where=t.c.expires_at < sa.bindparam("now"),
    ).returning(t.c.expires_at)


class SqlNonceStore:
    """Nonces in the ``tokenreq_nonces`` table of any SQLAlchemy database.

    On SQLite and PostgreSQL a claim is one statement::

        INSERT INTO tokenreq_nonces (key_name, nonce, expires_at) VALUES (...)
        ON CONFLICT (key_name, nonce) DO UPDATE SET expires_at = excluded.expires_at
        WHERE tokenreq_nonces.expires_at < :now
        RETURNING expires_at

    A row comes back when the pair was new or its old claim had expired; none
    when a live claim holds it. Other databases insert and treat the
    integrity error as "already claimed" (then delete-if-expired and insert
    once more). Expired rows are purged in bounded batches at most once per
    ``purge_interval_ms`` of the injected clock.
    """

    def __init__(
        self,
        url: str,
        *,
        now_ms: Clock = now_ms,
        instance_path: str | None = None,
        purge_interval_ms: int = 5000,
        purge_batch: int = 1000,
        upsert: bool | None = None,
    ) -> None:
        self._now = now_ms
        u = _sql_url(url, instance_path)
        self.url = u.render_as_string(hide_password=True)
        self._backend = u.get_backend_name()
        # No pool_pre_ping: a "SELECT 1" round trip before every claim cost as
        # much as the claim itself. A connection found dead instead (database
        # restarted, connections killed) is retried once on a fresh pool; see
        # _guard and _claim_upsert.
        kwargs: dict[str, Any] = {"pool_pre_ping": False, "pool_timeout": 10}
        connect_args: dict[str, Any] = {}
        if self._backend == "sqlite":
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_MS / 1000
        elif self._backend == "postgresql":
            if "connect_timeout" not in u.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
            # Upserts need no more; a server default of SERIALIZABLE would only add retries.
            kwargs["isolation_level"] = "READ COMMITTED"
        try:
            self._engine = sa.create_engine(u, connect_args=connect_args, **kwargs)
        except ImportError as exc:
            raise ConfigError(
                f"{SETTING}: the database driver for {self.url!r} is not installed ({exc.name})"
            ) from None
        except sa.exc.NoSuchModuleError:
            raise ConfigError(
                f"{SETTING}: unsupported URL scheme in {self.url!r}; use memory://, "
                "sqlite:///path, postgresql://..., another SQLAlchemy URL, or redis://..."
            ) from None
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"{SETTING}: invalid database URL {self.url!r}: {exc}") from None
        if self._backend == "sqlite":
            event.listen(self._engine, "connect", _sqlite_on_connect)
        elif self._backend == "postgresql":
            event.listen(self._engine, "connect", _postgres_on_connect)
        if upsert is None:
            upsert = self._backend in ("sqlite", "postgresql")
        self._upsert = upsert
        self._upsert_sql: str | None = None
        self._upsert_order: tuple[str, ...] | None = None
        if upsert:
            # Compiled once for this database; claims run it on a pooled DBAPI
            # connection, without SQLAlchemy's per-statement work (about half
            # the CPU time of a claim).
            compiled = _upsert_statement(self._backend).compile(dialect=self._engine.dialect)
            self._upsert_sql = str(compiled)
            if compiled.positional:
                self._upsert_order = tuple(compiled.positiontup or ())
        self._purge_interval_ms = purge_interval_ms
        self._purge_batch = purge_batch
        self._next_purge_ms: int | None = None
        self._purge_lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._table_ready = False
        _at_fork_in_child(self, SqlNonceStore._after_fork)
        try:
            self._ensure_table()
        except Exception as exc:
            # Not fatal: a database that is down at start-up must not stop the
            # app; the table is created by the first claim that reaches it.
            logger.warning(
                "nonce store %s is not reachable yet (%s); claims fail with 503 until it is",
                self.url,
                _describe(exc),
            )

    def _after_fork(self) -> None:
        # Drop (without closing) connections inherited from the parent process.
        self._engine.dispose(close=False)
        self._purge_lock = threading.Lock()
        self._init_lock = threading.Lock()

    # -- the public API

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        _check_args(key_name, nonce, expires_at_ms)
        digest = _nonce_digest(nonce).hex()
        claimed = self._guard(lambda: self._claim(key_name, digest, expires_at_ms))
        self._maybe_purge()
        return claimed

    def ping(self) -> None:
        def check() -> None:
            self._ensure_table()
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        self._guard(check)

    def close(self) -> None:
        self._engine.dispose()

    def count(self) -> int:
        """Rows in the table (live and not yet purged); for tests and monitoring."""

        def run() -> int:
            self._ensure_table()
            with self._engine.connect() as conn:
                n = conn.execute(sa.select(sa.func.count()).select_from(nonces_table)).scalar()
            return int(n or 0)

        return self._guard(run)

    def __repr__(self) -> str:
        return f"SqlNonceStore({self.url!r})"

    # -- internals

    def _guard(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``; turn any backend failure into :class:`StoreUnavailable`.

        When SQLAlchemy finds the connection dead (it then invalidates it),
        the pool is replaced and ``fn`` runs once more, on a new connection.
        """
        try:
            try:
                return fn()
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                self._engine.dispose()
                return fn()
        except StoreUnavailable:
            raise
        except Exception as exc:
            logger.warning("nonce store %s failed: %s", self.url, _describe(exc))
            raise StoreUnavailable(
                f"Nonce store unavailable ({self._backend} at {self.url}): {type(exc).__name__}"
            ) from exc

    def _ensure_table(self) -> None:
        """Create the table if missing; tolerate another process creating it at the same time."""
        if self._table_ready:
            return
        with self._init_lock:
            if self._table_ready:
                return
            for attempt in range(3):
                try:
                    nonce_metadata.create_all(self._engine, checkfirst=True)
                    break
                except sa.exc.DBAPIError:
                    # Lost a CREATE TABLE race ("already exists") or the database
                    # is down; only the first case finds the table now.
                    if sa.inspect(self._engine).has_table(nonces_table.name):
                        break
                    if attempt == 2:
                        raise
            self._table_ready = True

    def _claim(self, key_name: str, digest: str, expires_at_ms: int) -> bool:
        self._ensure_table()
        now = self._now()
        expiry = _effective_expiry(expires_at_ms, now)
        values = {"key_name": key_name, "nonce": digest, "expires_at": expiry}
        t = nonces_table
        if self._upsert_sql is not None:
            return self._claim_upsert({**values, "now": now})
        # Portable path: the primary key decides; never check-then-insert.
        if self._try_insert(values):
            return True
        with self._engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(t).where(
                    t.c.key_name == key_name, t.c.nonce == digest, t.c.expires_at < now
                )
            ).rowcount
        # Only the caller whose DELETE removed the expired row may insert again;
        # if a third caller's insert got in first, the primary key refuses ours.
        return deleted > 0 and self._try_insert(values)

    def _claim_upsert(self, params: dict[str, Any]) -> bool:
        """Run the claim upsert in its own transaction; a row back means claimed.

        A pooled connection found dead (database restarted, connections
        killed) is retried once on a fresh pool. That is safe: had the lost
        attempt committed, the retry finds its row and refuses the nonce (fail
        closed); it never accepts one twice.
        """
        assert self._upsert_sql is not None
        args: Any = params
        if self._upsert_order is not None:
            args = tuple(params[name] for name in self._upsert_order)
        # One statement is a transaction by itself, so it runs in the driver's
        # autocommit mode: no separate BEGIN and COMMIT (PostgreSQL: one round
        # trip instead of three; SQLite: fewer calls into the library, each of
        # which hands the GIL over). Same atomicity, same durability (the
        # statement's implicit commit obeys synchronous_commit / PRAGMA
        # synchronous like an explicit one).
        for attempt in (1, 2):
            conn = self._engine.raw_connection()
            dbapi_conn: Any = conn.dbapi_connection
            try:
                if self._backend == "postgresql":
                    dbapi_conn.autocommit = True
                    restore: tuple[str, Any] = ("autocommit", False)
                elif self._backend == "sqlite":
                    restore = ("isolation_level", dbapi_conn.isolation_level)
                    dbapi_conn.isolation_level = None
                else:  # pragma: no cover - only SQLite and PostgreSQL upsert
                    restore = ("", None)
                cursor = conn.cursor()
                try:
                    cursor.execute(self._upsert_sql, args)
                    rows = cursor.fetchall()
                finally:
                    cursor.close()
                if restore[0]:
                    setattr(dbapi_conn, restore[0], restore[1])
                else:  # pragma: no cover
                    conn.commit()
                return len(rows) > 0
            except Exception as exc:
                # Whatever went wrong, do not hand this connection out again.
                conn.invalidate()
                if attempt == 1 and self._is_disconnect(exc, dbapi_conn):
                    self._engine.dispose()
                    continue
                raise
            except BaseException:
                conn.invalidate()
                raise
            finally:
                conn.close()  # back to the pool (or discarded when invalidated)
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_disconnect(self, exc: Exception, dbapi_conn: Any) -> bool:
        dialect = self._engine.dialect
        dbapi = dialect.loaded_dbapi
        return isinstance(exc, dbapi.Error) and bool(dialect.is_disconnect(exc, dbapi_conn, None))

    def _try_insert(self, values: dict[str, Any]) -> bool:
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(nonces_table).values(values))
        except sa.exc.IntegrityError:
            return False
        return True

    def _maybe_purge(self) -> None:
        """Delete a bounded batch of expired rows, at most once per interval.

        A full batch schedules the next one for the next claim, so a backlog
        drains a batch per claim. Failures are logged, not raised: the claim
        itself already committed.
        """
        now = self._now()
        if self._next_purge_ms is not None and now < self._next_purge_ms:
            return
        if not self._purge_lock.acquire(blocking=False):
            return  # another thread of this process is purging
        try:
            self._next_purge_ms = now + self._purge_interval_ms
            if self._purge(now) >= self._purge_batch:
                self._next_purge_ms = now
        except Exception as exc:
            logger.warning(
                "nonce store %s: purging expired rows failed: %s", self.url, _describe(exc)
            )
        finally:
            self._purge_lock.release()

    def _purge(self, now: int) -> int:
        t = nonces_table
        with self._engine.begin() as conn:
            # The expiry of the batch-th oldest expired row bounds this DELETE
            # (portable: no LIMIT in DELETE; rows tied with it go too); both
            # statements use the expires_at index.
            cutoff = conn.execute(
                sa.select(t.c.expires_at)
                .where(t.c.expires_at < now)
                .order_by(t.c.expires_at)
                .offset(self._purge_batch - 1)
                .limit(1)
            ).scalar()
            bound = now - 1 if cutoff is None else int(cutoff)
            return int(conn.execute(sa.delete(t).where(t.c.expires_at <= bound)).rowcount)


# --------------------------------------------------------------------------
# Redis


class RedisNonceStore:
    """Nonces as Redis keys: ``SET key value NX PX ttl``, expired by Redis itself.

    The key is ``tokenreq:nonce:<key_name>:<hex sha256(nonce)>`` (unambiguous:
    the digest has a fixed length and no ``:``). The value is
    ``<expires_at_ms>:<random token>``. The TTL is relative,
    ``expires_at_ms - now_ms() + 1`` on the injected clock, so a clock
    offset between the app and Redis (or a test clock) does not shorten or
    stretch a claim. When ``SET NX`` finds the key but the injected clock says
    its claim expired, it is replaced under ``WATCH``/``MULTI``.
    """

    def __init__(self, url: str, *, now_ms: Clock = now_ms) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ConfigError(
                f"{SETTING} is a Redis URL but redis-py is not installed: "
                "pip install 'flask-tokenreq[redis]'"
            ) from None
        self._redis = redis
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
        # One connection per thread for claims (see _set_nx); a connection is
        # closed when its thread ends (redis-py closes it when collected).
        self._local = threading.local()
        self._thread_connections: weakref.WeakSet[Any] = weakref.WeakSet()
        _at_fork_in_child(self, RedisNonceStore._after_fork)
        self._policy_checked = False
        self._check_eviction_policy()

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        _check_args(key_name, nonce, expires_at_ms)
        key = (
            REDIS_KEY_PREFIX.encode()
            + key_name.encode("utf-8")
            + b":"
            + _nonce_digest(nonce).hex().encode()
        )
        token = random_bytes(8).hex().encode()  # 64 random bits, as secrets.token_hex(8)
        r = self._redis
        try:
            try:
                claimed = self._claim_once(key, expires_at_ms, token)
            except r.ConnectionError:
                # A pooled connection may be stale (server restarted): one more
                # try on a fresh one. The token recognises our own earlier
                # write, should it have landed before the connection broke.
                claimed = self._claim_once(key, expires_at_ms, token)
        except Exception as exc:
            raise self._unavailable(exc) from exc
        if not self._policy_checked:
            self._check_eviction_policy()
        return claimed

    def _claim_once(self, key: bytes, expires_at_ms: int, token: bytes) -> bool:
        now = self._now()
        expiry = _effective_expiry(expires_at_ms, now)
        ttl = expiry - now + 1  # live through expiry inclusive
        value = str(expiry).encode() + b":" + token
        if self._set_nx(key, value, ttl):
            return True
        # The key exists. Redis expires it on its own clock; the injected clock
        # may already consider it expired (or it is our own retried write).
        for _ in range(3):
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    current = pipe.get(key)
                    if current is not None:
                        raw = current if isinstance(current, bytes) else str(current).encode()
                        old_expiry, _, old_token = raw.partition(b":")
                        if old_token == token:
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
                except self._redis.WatchError:
                    continue  # the key changed under us: look again
        return False  # still contended after three looks: refuse (fail closed)

    def _set_nx(self, key: bytes, value: bytes, ttl_ms: int) -> bool:
        """``SET key value NX PX ttl_ms``: whether the key was set.

        The command ``Redis.set(..., nx=True, px=...)`` sends, on a connection
        of this thread's own, without the client's per-command layers (pool
        checkout with its stale-data poll, retry wrapper, metrics hooks,
        response callbacks): they cost three times the round trip itself.
        Errors are the same redis-py exceptions; a connection that failed is
        closed and reconnects on its next use.
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
        logger.warning("nonce store %s failed: %s", self.url, _describe(exc))
        return StoreUnavailable(
            f"Nonce store unavailable (redis at {self.url}): {type(exc).__name__}"
        )

    def _check_eviction_policy(self) -> None:
        """Warn unless ``maxmemory-policy`` is ``noeviction`` (evicted nonces could be replayed).

        CONFIG may be disabled (managed Redis): then say so at INFO and go on.
        When Redis is down, check again after the first successful command.
        """
        r = self._redis
        try:
            config = self._client.config_get("maxmemory-policy")
        except (r.ConnectionError, r.TimeoutError):
            return
        except r.RedisError as exc:
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


# --------------------------------------------------------------------------
# Opening a store from a URL


def default_nonce_store_url(instance_path: str) -> str:
    """``sqlite:///<instance_path>/tokenreq-nonces.sqlite3``, creating the folder.

    The default store: one file shared by every worker process on the host.
    """
    folder = os.path.abspath(instance_path)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, DEFAULT_SQLITE_FILENAME)
    return "sqlite:///" + quote(path, safe="/:\\")


def open_nonce_store(
    url: str, *, now_ms: Clock = now_ms, instance_path: str | None = None
) -> NonceStore:
    """The store for a ``TOKENREQ_NONCE_STORE`` URL.

    ``memory://``, ``redis://``/``rediss://``/``unix://``, else any SQLAlchemy
    URL (``postgresql://`` and ``postgres://`` use psycopg 3). A relative SQLite
    path is placed inside ``instance_path`` when given. An unknown scheme or
    malformed URL raises :class:`~flask_tokenreq.errors.ConfigError`. A store
    that is down is not an error here: its claims raise ``StoreUnavailable``
    until it is back.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{SETTING} must be a non-empty URL string")
    url = url.strip()
    scheme = url.partition(":")[0].lower()
    if scheme == "memory":
        return MemoryNonceStore(now_ms=now_ms)
    if scheme in ("redis", "rediss", "unix"):
        return RedisNonceStore(url, now_ms=now_ms)
    if "://" not in url:
        raise ConfigError(
            f"{SETTING} must be a URL such as memory://, sqlite:///path, "
            f"postgresql://... or redis://..., got {redact_url(url)!r}"
        )
    return SqlNonceStore(url, now_ms=now_ms, instance_path=instance_path)
