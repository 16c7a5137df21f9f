"""Databases for the key store and audit tests: a fresh SQLite file, a fresh PostgreSQL schema.

``db_url`` runs a test once on each. The PostgreSQL schema is unique per test
(the suite may run in several worktrees at once) and dropped afterwards;
connections reach it through ``search_path``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

#: Fernet keys used across the tests (generated once per session).
FERNET_1 = Fernet.generate_key().decode()
FERNET_2 = Fernet.generate_key().decode()
FERNET_OTHER = Fernet.generate_key().decode()


def pg_schema_url(base_url: str, schema: str) -> str:
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextlib.contextmanager
def fresh_schema(postgres_url: str, unique: str) -> Iterator[str]:
    """A new schema, dropped afterwards; yields the URL of a database whose tables land in it."""
    schema = f"tokenreq_t_{unique}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield pg_schema_url(postgres_url, schema)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        engine.dispose()


@pytest.fixture
def pg_schema(postgres_url: str, unique: str) -> Iterator[str]:
    """A fresh schema; the URL of a database whose tables land in it."""
    with fresh_schema(postgres_url, unique) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tokenreq.sqlite3'}"
    url: str = request.getfixturevalue("pg_schema")
    return url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def module_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``db_url`` for a whole module (one server per database): a SQLite file, then a
    PostgreSQL schema of its own, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'tokenreq.sqlite3'}"
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    with fresh_schema(postgres_url, uuid.uuid4().hex[:12]) as url:
        yield url


class TcpProxy:
    """Forwards a local port to a real server; :meth:`cut` drops every connection.

    Stands between the store and a real PostgreSQL so a test can take the
    database away after start-up (the server itself stays up for others).
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    client.close()
                    return
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            self.closed = True
            self.listener.close()
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
