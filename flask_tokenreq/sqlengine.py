"""One SQL engine set-up for every database of the package.

The nonce store (:mod:`flask_tokenreq.stores.sql`, ``TOKENREQ_NONCE_STORE``)
and the managed keys and audit log (:mod:`flask_tokenreq.db`,
``TOKENREQ_DATABASE_URL``) turn a URL into a SQLAlchemy engine here, so they
agree on what a URL means and on the timeouts that keep a request from
hanging:

- ``postgres://`` and ``postgresql://`` mean psycopg 3; a relative SQLite path
  goes into the app's instance folder; an in-memory SQLite database (one per
  connection) is refused;
- PostgreSQL: a connect timeout, and a statement timeout (lock waits
  included) on every connection; SQLite: the busy timeout;
- a missing driver, an unknown scheme or a malformed URL is a
  :class:`~flask_tokenreq.errors.ConfigError` naming the setting (the URL is
  shown with its password hidden);
- a URL in a message or log line is :func:`shown_url`'s: no password, neither
  ``user:password@`` nor ``?password=`` (which libpq honours).

What differs between the two users (transaction handling, pre-ping, SQLite
pragmas) stays with them. Imported only by modules that use SQL, so
``import flask_tokenreq`` does not load SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import sqlalchemy as sa

from .errors import ConfigError
from .stores.base import redact_url

__all__ = [
    "CONNECT_TIMEOUT_S",
    "SQLITE_BUSY_TIMEOUT_MS",
    "STATEMENT_TIMEOUT_MS",
    "create_engine",
    "parse_url",
    "shown_url",
]

#: Seconds to wait for a PostgreSQL connection before failing.
CONNECT_TIMEOUT_S = 2
#: Milliseconds a PostgreSQL statement (including lock waits) may take.
STATEMENT_TIMEOUT_MS = 5000
#: Milliseconds SQLite waits for another connection's write lock.
SQLITE_BUSY_TIMEOUT_MS = 5000


def parse_url(
    url: str,
    instance_path: str | None,
    *,
    setting: str,
    memory_hint: str = "use a file (sqlite:///path)",
) -> sa.URL:
    """Parse a SQLAlchemy URL; raises :class:`ConfigError` naming ``setting``.

    ``postgres(ql)://`` becomes ``postgresql+psycopg://``; a relative SQLite
    path is placed in ``instance_path`` (whose folder is made when missing).
    ``memory_hint`` ends the message that refuses an in-memory SQLite URL.
    """
    try:
        u = sa.make_url(url)
    except Exception:
        raise ConfigError(f"{setting}: cannot parse the database URL") from None
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
                f"{setting}: an in-memory SQLite database is not shared between connections "
                f"or processes; {memory_hint}"
            )
        if not database.startswith("file:") and not os.path.isabs(database) and instance_path:
            database = os.path.join(instance_path, database)
            # A failure here shows later as StoreUnavailable, when the file cannot be opened.
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(database), exist_ok=True)
            u = u.set(database=database)
    return u


def shown_url(u: sa.URL) -> str:
    """``u`` as messages and log lines show it: every password replaced by ``***``.

    SQLAlchemy hides the one in ``user:password@``; :func:`redact_url` also
    masks password-like query values (``?password=``, ``?sslpassword=``).
    """
    return redact_url(u.render_as_string(hide_password=True))


def _postgres_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection PostgreSQL settings: a statement (or lock wait) cannot hang."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    finally:
        cursor.close()
    # A plain SET inside a transaction that is later rolled back is undone.
    dbapi_connection.commit()


def create_engine(
    u: sa.URL,
    *,
    setting: str,
    pre_ping: bool,
    isolation_level: str | None = None,
    schemes: str = "sqlite:///path or postgresql://...",
) -> sa.Engine:
    """An engine for ``u`` with the package's timeouts; raises :class:`ConfigError`.

    ``pre_ping``: test pooled connections on checkout. ``isolation_level``:
    SQLAlchemy's, for every connection (``None``: the driver's default).
    ``schemes`` lists what to use instead of an unknown URL scheme.
    """
    backend = u.get_backend_name()
    shown = shown_url(u)
    kwargs: dict[str, Any] = {"pool_pre_ping": pre_ping, "pool_timeout": 10}
    if isolation_level is not None:
        kwargs["isolation_level"] = isolation_level
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_MS / 1000
    elif backend == "postgresql" and "connect_timeout" not in u.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = sa.create_engine(u, connect_args=connect_args, **kwargs)
    except ImportError as exc:
        raise ConfigError(
            f"{setting}: the database driver for {shown!r} is not installed ({exc.name}); "
            "for PostgreSQL: pip install 'flask-tokenreq[postgres]'"
        ) from None
    except sa.exc.NoSuchModuleError:
        raise ConfigError(
            f"{setting}: unsupported URL scheme in {shown!r}; use {schemes}"
        ) from None
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"{setting}: invalid database URL {shown!r}: {exc}") from None
    if backend == "postgresql":
        sa.event.listen(engine, "connect", _postgres_on_connect)
    return engine
