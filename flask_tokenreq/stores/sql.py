"""SQLAlchemy URLs (``sqlite:///path``, ``postgresql://...``, others): a table of claims."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from ..clock import Clock, now_ms
from ..errors import StoreUnavailable
from ..sqlengine import (
    SQLITE_BUSY_TIMEOUT_MS,
    STATEMENT_TIMEOUT_MS,
    create_engine,
    parse_url,
    shown_url,
)
from .base import (
    MAX_KEY_NAME_LENGTH,
    SETTING,
    at_fork_in_child,
    claim_key,
    describe,
    effective_expiry,
    logger,
    unavailable,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "STATEMENT_TIMEOUT_MS",
    "SqlNonceStore",
    "nonce_metadata",
    "nonces_table",
]

_T = TypeVar("_T")

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
    """Per-connection SQLite settings: every commit is flushed to disk.

    ``synchronous=FULL`` is SQLite's usual default; it is set anyway so that a
    build compiled with another default cannot weaken replay protection after
    a power loss. (The busy timeout comes from ``connect(timeout=...)``; WAL
    mode is a property of the file, set once in :meth:`SqlNonceStore._setup`.)
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


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
    )


class _HostLock:
    """An exclusive lock for every process and thread of this host that uses one SQLite file.

    ``fcntl.flock`` on a side file (``<database>.lock``) plus a thread lock
    (``flock`` does not exclude threads that share a file descriptor). A
    waiter sleeps in the kernel and is woken when the holder releases the
    lock, instead of polling as SQLite's busy handler does.

    Lock order: a caller checks out its pooled connection first and then
    takes this lock, so a thread holding the lock never waits for the pool.
    (``_setup`` takes it first, but runs before any claim holds a connection.)
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        assert fcntl is not None
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fd = self._fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def after_fork(self) -> None:
        # The inherited descriptor shares the parent's lock: open our own.
        self._thread_lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class SqlNonceStore:
    """Nonces in the ``tokenreq_nonces`` table of any SQLAlchemy database.

    On SQLite and PostgreSQL a claim is one statement, run in autocommit mode
    (a single statement is its own transaction; its commit is flushed like
    any other)::

        INSERT INTO tokenreq_nonces (key_name, nonce, expires_at) VALUES (...)
        ON CONFLICT (key_name, nonce) DO UPDATE SET expires_at = excluded.expires_at
        WHERE tokenreq_nonces.expires_at < :now

    One row is written when the pair was new or its old claim had expired;
    none when a live claim holds it. Other databases insert and treat the
    integrity error as "already claimed" (then delete-if-expired and insert
    once more). Expired rows are purged in bounded batches at most once per
    ``purge_interval_ms`` of the injected clock, and all at once by
    :meth:`purge`.

    SQLite: the file is switched to WAL mode and the table created once,
    under an exclusive lock on a side file shared by every process of the
    host, so that many workers opening a fresh file at once cannot fail.
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
        u = parse_url(
            url,
            instance_path,
            setting=SETTING,
            memory_hint="use a file (sqlite:///path) or memory://",
        )
        self.url = shown_url(u)
        self._backend = u.get_backend_name()
        self._host_lock: _HostLock | None = None
        if self._backend == "sqlite":
            database = u.database or ""
            if fcntl is not None and not database.startswith("file:"):
                self._host_lock = _HostLock(database + ".lock")
        # No pool_pre_ping: a "SELECT 1" round trip before every claim costs as
        # much as the claim itself. A connection found dead instead (database
        # restarted, connections killed) is retried once on a fresh pool: see
        # _guard. Every statement is its own transaction: a claim is one
        # statement, so no separate BEGIN and COMMIT (one round trip on PostgreSQL).
        autocommit = self._backend in ("sqlite", "postgresql")
        self._engine = create_engine(
            u,
            setting=SETTING,
            pre_ping=False,
            isolation_level="AUTOCOMMIT" if autocommit else None,
            schemes="memory://, sqlite:///path, postgresql://..., another SQLAlchemy URL, "
            "or redis://...",
        )
        if self._backend == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_on_connect)
        if upsert is None:
            upsert = self._backend in ("sqlite", "postgresql")
        self._upsert_sql: str | None = None
        self._upsert_order: tuple[str, ...] | None = None
        if upsert:
            # Compiled once for this database and run on a pooled DBAPI
            # connection: SQLAlchemy's per-statement execution work cost 12-27 %
            # of an exchange's worker CPU (docs/performance.md).
            compiled = _upsert_statement(self._backend).compile(dialect=self._engine.dialect)
            self._upsert_sql = str(compiled)
            if compiled.positional:
                self._upsert_order = tuple(compiled.positiontup or ())
        self._purge_interval_ms = purge_interval_ms
        self._purge_batch = purge_batch
        self._next_purge_ms: int | None = None
        self._purge_lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._ready = False
        at_fork_in_child(self, SqlNonceStore._after_fork)
        try:
            self._setup()
        except Exception as exc:
            # Not fatal: a database that is down at start-up must not stop the
            # app; the first claim that reaches it sets it up.
            logger.warning(
                "nonce store %s is not reachable yet (%s); claims fail with 503 until it is",
                self.url,
                describe(exc),
            )

    @classmethod
    def from_url(
        cls, url: str, *, now_ms: Clock = now_ms, instance_path: str | None = None
    ) -> SqlNonceStore:
        """The store for a SQLAlchemy URL (relative SQLite paths go into ``instance_path``)."""
        return cls(url, now_ms=now_ms, instance_path=instance_path)

    def _after_fork(self) -> None:
        # Drop (without closing) connections inherited from the parent process.
        self._engine.dispose(close=False)
        self._purge_lock = threading.Lock()
        self._init_lock = threading.Lock()
        if self._host_lock is not None:
            self._host_lock.after_fork()

    # -- the public API

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        digest = claim_key(key_name, nonce, expires_at_ms).hex()
        claimed = self._guard(lambda: self._claim(key_name, digest, expires_at_ms))
        self._maybe_purge()
        return claimed

    def purge(self, now: int | None = None) -> int:
        """Delete every row expired at ``now`` (default: the injected clock); how many.

        In batches of ``purge_batch`` rows, so concurrent claims wait for one
        batch at most. Raises ``StoreUnavailable`` when the database fails.
        """
        at = self._now() if now is None else now

        def run() -> int:
            self._setup()
            total = 0
            while True:
                deleted = self._delete_expired(at)
                total += deleted
                if deleted < self._purge_batch:
                    return total

        return self._guard(run)

    def ping(self) -> None:
        def check() -> None:
            self._setup()
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        self._guard(check)

    def close(self) -> None:
        self._engine.dispose()
        if self._host_lock is not None:
            self._host_lock.close()

    def count(self) -> int:
        """Rows in the table (live and not yet purged); for tests and monitoring."""

        def run() -> int:
            self._setup()
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
        That is safe for a claim: had the lost attempt committed, the retry
        finds its row and refuses the nonce (fail closed); it never accepts
        one twice.
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
            raise unavailable(self._backend, self.url, exc) from exc

    @contextlib.contextmanager
    def _host_exclusive(self) -> Iterator[None]:
        """Hold the host-wide lock of a SQLite file (nothing for other databases)."""
        if self._host_lock is None:
            yield
        else:
            with self._host_lock.hold():
                yield

    def _setup(self) -> None:
        """Once: WAL mode (SQLite) and the table, safe against other processes doing the same.

        SQLite answers ``PRAGMA journal_mode = WAL`` on a fresh file with
        "database is locked" at once, without waiting, when another connection
        is switching it too; the host lock makes the processes take turns.
        Servers (PostgreSQL) may still race on ``CREATE TABLE``: the loser finds
        the table and goes on.
        """
        if self._ready:
            return
        with self._init_lock:
            if self._ready:
                return
            with self._host_exclusive():
                if self._backend == "sqlite":
                    with self._engine.connect() as conn:
                        conn.exec_driver_sql("PRAGMA journal_mode = WAL").all()
                for attempt in range(3):
                    try:
                        with self._engine.connect() as conn:
                            conn = conn.execution_options(
                                isolation_level=conn.default_isolation_level
                            )
                            with conn.begin():
                                nonce_metadata.create_all(conn, checkfirst=True)
                        break
                    except sa.exc.DBAPIError:
                        # Lost a CREATE TABLE race ("already exists") or the
                        # database is down; only the first case finds the table.
                        if sa.inspect(self._engine).has_table(nonces_table.name):
                            break
                        if attempt == 2:
                            raise
            self._ready = True

    def _claim(self, key_name: str, digest: str, expires_at_ms: int) -> bool:
        self._setup()
        now = self._now()
        values = {
            "key_name": key_name,
            "nonce": digest,
            "expires_at": effective_expiry(expires_at_ms, now),
        }
        if self._upsert_sql is not None:
            return self._claim_upsert({**values, "now": now})
        # Portable path: the primary key decides; never check-then-insert.
        if self._try_insert(values):
            return True
        t = nonces_table
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
        """Run the claim upsert; one row written means claimed.

        The engine's connections are in autocommit mode, so the statement
        commits (and SQLite flushes) inside ``execute``; for a SQLite file
        that happens under the host lock, held for that call only. A pooled
        connection found dead (database restarted, connections killed) is
        retried once on a fresh pool: safe, because had the lost attempt
        committed, the retry finds its row and refuses (fail closed).
        """
        assert self._upsert_sql is not None
        args: Any = params
        if self._upsert_order is not None:
            args = tuple(params[name] for name in self._upsert_order)
        for attempt in (1, 2):
            conn = self._engine.raw_connection()
            dbapi_conn = conn.dbapi_connection
            try:
                cursor = conn.cursor()
                try:
                    with self._host_exclusive():
                        cursor.execute(self._upsert_sql, args)
                    return bool(cursor.rowcount == 1)
                finally:
                    cursor.close()
            except Exception as exc:
                conn.invalidate()  # never hand this connection out again
                dialect = self._engine.dialect
                if (
                    attempt == 1
                    and isinstance(exc, dialect.loaded_dbapi.Error)
                    and dialect.is_disconnect(exc, dbapi_conn, None)
                ):
                    self._engine.dispose()
                    continue
                raise
            finally:
                conn.close()  # back to the pool (or discarded when invalidated)
        raise AssertionError("unreachable")  # pragma: no cover

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
            if self._delete_expired(now) >= self._purge_batch:
                self._next_purge_ms = now
        except Exception as exc:
            logger.warning(
                "nonce store %s: purging expired rows failed: %s", self.url, describe(exc)
            )
        finally:
            self._purge_lock.release()

    def _delete_expired(self, now: int) -> int:
        """Delete up to about ``purge_batch`` rows expired at ``now``; how many."""
        t = nonces_table
        # Connection first, then the host lock, in the same order as a claim:
        # a thread holding the lock never waits for the pool.
        with self._engine.begin() as conn, self._host_exclusive():
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
