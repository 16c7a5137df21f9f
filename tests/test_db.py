"""The SQL engine of managed keys and the audit log: the hot-path reads on SQLite.

:meth:`Database.fetch` runs on each thread's own SQLite connection. It must
see every committed change at once, close with its thread, never be shared
with a forked child, and be replaced after a failure.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_tokenreq.db import Database
from flask_tokenreq.errors import ConfigError
from flask_tokenreq.stores import open_nonce_store

TABLE = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    database.create_all(TABLE.metadata)
    return database


def count(db: Database) -> int:
    prepared = db.prepare(sa.select(sa.func.count()).select_from(TABLE))
    return int(db.fetch(prepared, {})[0][0])


def test_fetch_sees_each_commit_at_once(db: Database) -> None:
    assert count(db) == 0
    for n in range(1, 4):
        with db.write() as conn:
            conn.execute(TABLE.insert().values(id=n))
        assert count(db) == n


def open_files_of(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path`` (or its
    ``-wal``/``-shm`` files). Only this database's: other tests' leftovers
    (background threads, pooled connections) open and close files of their own
    at any time, so a count of every descriptor is not this test's to assert."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since listdir
            continue
        if target.startswith(str(path)):
            count += 1
    return count


def read_in_a_thread(db: Database) -> None:
    thread = threading.Thread(target=count, args=(db,))
    thread.start()
    thread.join()


def test_a_threads_connection_closes_with_the_thread(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    count(db)
    # SQLite keeps the descriptor of a connection closed while others on the
    # same file are open (closing it would drop their POSIX locks) and reuses
    # it for the next one: after the first thread, the count must not grow.
    read_in_a_thread(db)
    gc.collect()
    before = open_files_of(path)
    for _ in range(20):
        read_in_a_thread(db)
    gc.collect()
    assert len(db._all_readers) == 1  # this thread's
    assert open_files_of(path) <= before
    db.dispose()
    assert len(db._all_readers) == 0
    assert open_files_of(path) == 0


def _child(db: Database, out: multiprocessing.Queue[object]) -> None:
    out.put((count(db), db._readers.reader.pid == os.getpid()))  # type: ignore[union-attr]


def test_a_forked_child_opens_its_own_connection(db: Database) -> None:
    count(db)
    parent = db._readers.reader  # type: ignore[union-attr]
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[object] = context.Queue()
    child = context.Process(target=_child, args=(db, out))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert out.get(timeout=5) == (0, True)
    assert db._readers.reader is parent  # type: ignore[union-attr]
    assert count(db) == 0


def test_a_failed_read_replaces_the_connection(db: Database) -> None:
    count(db)
    first = db._readers.reader  # type: ignore[union-attr]
    bad = db.prepare(sa.select(sa.text("no_such_column")).select_from(TABLE))
    with pytest.raises(sqlite3.OperationalError):
        db.fetch(bad, {})
    assert count(db) == 0
    assert db._readers.reader is not first  # type: ignore[union-attr]


# -- write(): every transaction is durable ---------------------------------------------------


def _synchronous(conn: sa.Connection) -> int:
    return int(conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])  # type: ignore[union-attr]


def test_writes_are_durable_by_default(db: Database) -> None:
    with db.write() as conn:
        assert _synchronous(conn) == 2  # FULL: the commit waits for the disk
        conn.execute(TABLE.insert().values(id=1))
    assert count(db) == 1


@pytest.mark.parametrize(
    ("open_url", "setting"),
    [(Database, "TOKENREQ_DATABASE_URL"), (open_nonce_store, "TOKENREQ_NONCE_STORE")],
)
def test_a_missing_driver_error_shows_no_password(
    open_url: Callable[[str], object], setting: str
) -> None:
    """The URL in the message hides a password given as ``?password=`` too."""
    with pytest.raises(ConfigError) as info:
        open_url("mysql://u:hunter2@h/db?password=hunter2&sslpassword=hunter2")  # no MySQLdb
    message = str(info.value)
    assert setting in message
    assert "not installed" in message
    assert "hunter2" not in message
