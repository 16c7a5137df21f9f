"""Server-side sign-in sessions for the example apps.

Flask's session cookie is signed, not stored: deleting it in one browser does
not stop a copy of it from working elsewhere. So the examples give
flask-login an *alternative id* instead of the username: a random session id
whose row in this store says who signed in. Signing out deletes the row, and
every copy of the cookie stops working at once, in every worker process.

Only the SHA-256 of a session id is stored (a leaked database holds no usable
cookie). Any SQLAlchemy URL works: an SQLite file in the instance folder is
shared by all gunicorn workers on one host; use PostgreSQL for several hosts.
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from flask_tokenreq.clock import Clock, now_ms
from flask_tokenreq.errors import StoreUnavailable

metadata = sa.MetaData()
sessions_table = sa.Table(
    "example_login_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(255), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)
_expires_index = sa.Index("ix_example_login_sessions_expires", sessions_table.c.expires_ms)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    """Sign-in sessions in one SQL table: start, look up, end.

    ``lifetime_ms`` bounds a session even if nobody signs out (a stolen
    cookie stops working then too). A database error is a 503
    (:class:`StoreUnavailable`): nobody is signed in while the store is down.
    """

    def __init__(self, url: str, *, lifetime_ms: int, now_ms: Clock = now_ms) -> None:
        connect_args = {"timeout": 10} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        self.lifetime_ms = lifetime_ms
        self.now_ms = now_ms
        # IF NOT EXISTS: several gunicorn workers may create the table at the same moment.
        with self.engine.begin() as conn:
            conn.execute(CreateTable(sessions_table, if_not_exists=True))
            conn.execute(CreateIndex(_expires_index, if_not_exists=True))

    def start(self, username: str) -> str:
        """A new session for ``username``; returns its id (for the signed cookie only)."""
        session_id = secrets.token_urlsafe(32)
        now = self.now_ms()
        try:
            with self.engine.begin() as conn:
                conn.execute(sessions_table.delete().where(sessions_table.c.expires_ms <= now))
                conn.execute(
                    sessions_table.insert().values(
                        id_hash=_hash(session_id),
                        username=username,
                        created_ms=now,
                        expires_ms=now + self.lifetime_ms,
                    )
                )
        except sa.exc.SQLAlchemyError:
            raise StoreUnavailable("Sign-in session store unavailable") from None
        return session_id

    def username(self, session_id: str) -> str | None:
        """Who holds this session; ``None`` when it ended, expired or never existed."""
        query = sa.select(sessions_table.c.username).where(
            sessions_table.c.id_hash == _hash(session_id),
            sessions_table.c.expires_ms > self.now_ms(),
        )
        try:
            with self.engine.connect() as conn:
                return conn.scalar(query)
        except sa.exc.SQLAlchemyError:
            raise StoreUnavailable("Sign-in session store unavailable") from None

    def end(self, session_id: str) -> None:
        """End a session: every copy of its cookie stops working."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sessions_table.delete().where(sessions_table.c.id_hash == _hash(session_id))
                )
        except sa.exc.SQLAlchemyError:
            raise StoreUnavailable("Sign-in session store unavailable") from None

    def close(self) -> None:
        self.engine.dispose()
