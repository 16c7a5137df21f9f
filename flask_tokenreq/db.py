"""The SQL engine behind managed keys and the audit log (``TOKENREQ_DATABASE_URL``).

One job: turn a URL (or an engine an app already has) into a SQLAlchemy
engine set up the way the key store and the audit log need it, and turn every
database failure into :class:`~flask_tokenreq.errors.StoreUnavailable` (503,
code 50003: fail closed). Imported only by the modules that use SQL, so
``import flask_tokenreq`` does not load SQLAlchemy.

The URL and the engine (psycopg 3 for ``postgresql://``, relative SQLite
paths in the instance folder, connect, statement and busy timeouts) come
from :mod:`flask_tokenreq.sqlengine`, shared with the nonce store. What this
module adds for the key store and the audit log:

- SQLite: WAL (readers do not block the writer), and explicit ``BEGIN`` /
  ``BEGIN IMMEDIATE`` so a write transaction holds the write lock from its
  first statement (pysqlite would start it late, after the reads); the
  hot-path reads on each thread's own connection.
- PostgreSQL: ``READ COMMITTED``, connections pinged on checkout.
- Forked workers (gunicorn ``--preload``) drop inherited connections.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event

from .errors import ConfigError, StoreUnavailable
from .sqlengine import SQLITE_BUSY_TIMEOUT_MS, create_engine, parse_url, shown_url
from .stores.base import at_fork_in_child, describe

__all__ = [
    "SETTING",
    "Database",
    "Prepared",
    "describe",
]

logger = logging.getLogger("flask_tokenreq")

#: The setting this engine is configured by; named in configuration errors.
SETTING = "TOKENREQ_DATABASE_URL"
#: File name of the default SQLite database inside the app's instance folder.
DEFAULT_SQLITE_FILENAME = "tokenreq.sqlite3"
#: Execution option marking a connection whose transaction will write.
WRITE_OPTION = "tokenreq_write"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement compiled once for this database (see :meth:`Database.prepare`)."""

    sql: str
    #: Parameter names in order, for drivers with positional parameters (SQLite).
    order: tuple[str, ...] | None
    #: Values of the statement's own literals (``id = 1``), merged under the caller's.
    defaults: dict[str, Any]


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings; transactions are begun by :func:`_sqlite_on_begin`."""
    # Take transaction control away from pysqlite (it would BEGIN only before
    # the first INSERT/UPDATE, after the reads of a read-modify-write).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    """``BEGIN IMMEDIATE`` for writers (the write lock first, waited for), ``BEGIN`` for readers."""
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


class _Reader:
    """A thread's SQLite connection for :meth:`Database.fetch` (closed with its last reference)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pid = os.getpid()

    def close(self, _getpid: Any = os.getpid, _suppress: Any = contextlib.suppress) -> None:
        # No module globals here (both are bound at definition): at interpreter
        # exit, ``os`` and ``contextlib`` may already be None when the last
        # reader is collected.
        if self.pid == _getpid():  # never a connection inherited from a parent
            with _suppress(Exception):
                self.conn.close()

    # The thread ended (its locals went away): close rather than leave it to
    # the driver's finalizer, which can keep the file descriptor open.
    __del__ = close


class Database:
    """A SQLAlchemy engine for the key store and the audit log, and the failure policy.

    ``url_or_engine`` is a URL (configured here) or an :class:`sqlalchemy.Engine`
    the app made (used as it is: its owner configured it; on SQLite, give it
    WAL and a busy timeout). ``name`` goes into log lines and errors
    (``"key store"``, ``"audit log"``).
    """

    def __init__(
        self,
        url_or_engine: str | sa.Engine,
        *,
        instance_path: str | None = None,
        setting: str = SETTING,
        name: str = "database",
    ) -> None:
        self.name = name
        #: The database file of a SQLite database configured here by a plain path
        #: (symlinks resolved); ``None`` otherwise.
        self.sqlite_file: str | None = None
        #: SQLite: each thread's reading connection for :meth:`fetch` (``None``: the pool).
        self._readers: threading.local | None = None
        self._reader_lock = threading.Lock()
        self._all_readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        if isinstance(url_or_engine, sa.Engine):
            self.engine = url_or_engine
            self.backend = self.engine.dialect.name
            self.url = shown_url(self.engine.url)
            self.owned = False
            self._dbapi_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
            return
        if not isinstance(url_or_engine, str):
            raise ConfigError(f"{setting} must be a database URL string")
        u = parse_url(url_or_engine, instance_path, setting=setting)
        self.url = shown_url(u)
        self.backend = u.get_backend_name()
        # PostgreSQL connections die with a server restart: ping on checkout. A
        # SQLite connection is a file handle; pinging it would only cost time.
        self.engine = create_engine(
            u,
            setting=setting,
            pre_ping=self.backend != "sqlite",
            isolation_level="READ COMMITTED" if self.backend == "postgresql" else None,
        )
        self.owned = True
        self._dbapi_error = self.engine.dialect.loaded_dbapi.Error
        if self.backend == "sqlite":
            self._readers = threading.local()
            if u.database and not u.database.startswith("file:"):
                self.sqlite_file = os.path.realpath(u.database)
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
        at_fork_in_child(self, Database._after_fork)

    def _after_fork(self) -> None:
        """Drop (without closing) connections a forked child inherited from its parent."""
        self.engine.dispose(close=False)
        # The parent's reading connections are the parent's (fetch checks the pid).
        self._all_readers = weakref.WeakSet()
        self._reader_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction: committed when the block ends, rolled back on any error.

        On SQLite it starts with ``BEGIN IMMEDIATE``, so the transaction holds
        the write lock before its first read.
        """
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read transaction (one snapshot on SQLite; read committed on PostgreSQL)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def create_all(self, metadata: sa.MetaData) -> None:
        """Create ``metadata``'s missing tables; safe when several processes do it at once.

        Database failures propagate (call it inside :meth:`guard`).
        """
        for attempt in range(3):
            try:
                # In a write transaction: on SQLite, BEGIN IMMEDIATE makes
                # parallel creators take turns (a deferred one would fail at
                # once, without waiting, when it upgrades to a writer).
                with self.write() as conn:
                    metadata.create_all(conn, checkfirst=True)
                return
            except sa.exc.DBAPIError:
                # Lost a CREATE TABLE race ("already exists"), or the database
                # is down; only the first case finds every table now.
                names = set(sa.inspect(self.engine).get_table_names())
                if all(t.name in names for t in metadata.sorted_tables):
                    return
                if attempt == 2:
                    raise

    def guard(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``; turn a database failure into :class:`StoreUnavailable` (fail closed).

        Errors of the library itself (:class:`~flask_tokenreq.errors.TokenReqError`,
        :class:`ConfigError`, ``ValueError``, ``LookupError``) pass through.
        """
        try:
            return fn()
        except (sa.exc.SQLAlchemyError, self._dbapi_error) as exc:
            logger.warning("%s %s failed: %s", self.name, self.url, describe(exc))
            raise StoreUnavailable(
                f"The {self.name} is unavailable ({self.backend}): {type(exc).__name__}"
            ) from None

    def prepare(self, stmt: sa.Select[Any]) -> Prepared:
        """Compile ``stmt`` once, for :meth:`fetch` (bind parameters by name)."""
        compiled = stmt.compile(dialect=self.engine.dialect)
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        defaults = {k: v for k, v in compiled.params.items() if v is not None}
        return Prepared(str(compiled), order, defaults)

    def fetch(self, prepared: Prepared, params: dict[str, Any]) -> list[Any]:
        """Run one read-only statement on a pooled driver connection; its rows.

        The hot paths (a generation check per guarded request, a key lookup
        per exchange) skip SQLAlchemy's per-execution work, which costs
        several times the query itself on SQLite. One statement is its own
        snapshot: SQLite connections here are in autocommit mode (see
        :func:`_sqlite_on_connect`), PostgreSQL's are switched to it.
        Failures propagate as driver errors; call it inside :meth:`guard`.
        """
        values = {**prepared.defaults, **params}
        args: Any = values
        if prepared.order is not None:
            args = tuple(values[name] for name in prepared.order)
        if self._readers is not None:
            return self._fetch_sqlite(prepared.sql, args)
        conn = self.engine.raw_connection()
        dbapi_conn: Any = conn.dbapi_connection
        try:
            if self.backend == "postgresql":
                dbapi_conn.autocommit = True
            cursor = conn.cursor()
            try:
                cursor.execute(prepared.sql, args)
                rows = list(cursor.fetchall())
            finally:
                cursor.close()
            if self.backend == "postgresql":
                dbapi_conn.autocommit = False
            elif self.backend != "sqlite":  # pragma: no cover - other databases
                dbapi_conn.rollback()
            return rows
        except BaseException:
            conn.invalidate()  # whatever went wrong, do not hand it out again
            raise
        finally:
            conn.close()

    def _fetch_sqlite(self, sql: str, args: Any) -> list[Any]:
        """:meth:`fetch` on SQLite: on this thread's own reading connection.

        A pool checkout and return cost more than the statement itself (SQLite
        runs in this process), so each thread keeps one connection, detached
        from the pool, for these reads; it closes when the thread ends. It is
        in autocommit mode: every statement is its own snapshot, and no
        transaction stays open between requests.
        """
        assert self._readers is not None
        reader: _Reader | None = getattr(self._readers, "reader", None)
        if reader is None or reader.pid != os.getpid():
            fairy = self.engine.raw_connection()
            fairy.detach()  # this thread's from now on; the pool forgets it
            reader = _Reader(fairy.dbapi_connection)
            self._readers.reader = reader
            with self._reader_lock:
                self._all_readers.add(reader)
        try:
            cursor = reader.conn.cursor()
            try:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except BaseException:
            self._readers.reader = None  # whatever went wrong, open another next time
            reader.close()
            raise

    def dispose(self) -> None:
        """Close pooled connections and the reading connections (only of an engine made here)."""
        if self.owned:
            self.engine.dispose()
            with self._reader_lock:
                readers = list(self._all_readers)
                self._all_readers.clear()
            for reader in readers:
                reader.close()
