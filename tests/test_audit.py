"""The audit log: rows, queries, purge, signals, the batched writer, and no secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_tokenreq import models
from flask_tokenreq.audit import (
    DAY_MS,
    EVENTS,
    REDACTED,
    AuditEvent,
    AuditLog,
    audit_event,
)
from flask_tokenreq.db import Database
from flask_tokenreq.errors import StoreUnavailable
from flask_tokenreq.keys.secret import new_secret
from tests.conftest import DATABASE_URL, FakeClock
from tests.dbs import db_url, pg_schema

__all__ = ["db_url", "pg_schema"]  # fixtures used by name

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9."
    "eyJpc3MiOiJ0b2tlbnJlcSIsImNsaWVudElkIjoiYWxpY2UifQ."
    "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
)
MAC = "zYTLhzpwZd+1LjpMyYN6U0w4+gJcKHI62Fgn4jmsZxY="
TICKET = "eyJhY3RvciI6ImFsaWNlIn0.Z1a2b3.c4d5e6f7g8h9i0j1k2l3m4n5o6p7"


@pytest.fixture
def log(db_url: str, clock: FakeClock) -> Iterator[AuditLog]:
    audit = AuditLog(db_url, now_ms=clock)
    models.metadata.create_all(audit.db.engine)
    yield audit
    audit.close()
    audit.db.dispose()


@pytest.fixture
def received() -> Iterator[list[tuple[Any, AuditEvent]]]:
    got: list[tuple[Any, AuditEvent]] = []

    def receiver(sender: Any, event: AuditEvent, **extra: Any) -> None:
        got.append((sender, event))

    audit_event.connect(receiver)
    yield got
    audit_event.disconnect(receiver)


def all_rows(log: AuditLog) -> list[dict[str, Any]]:
    with log.db.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.select(models.audit).order_by(models.audit.c.id)).mappings()
        ]


def test_record_writes_the_design_columns(log: AuditLog, clock: FakeClock) -> None:
    ev = log.record(
        "token.refused",
        key_name="app.key1",
        client_id="alice",
        code=40104,
        remote_addr="203.0.113.9",
        request_id="req-1",
        detail={"reason": "timestamp not current", "skewMs": 180_000},
    )
    [row] = all_rows(log)
    assert set(row) == {
        "id",
        "at",
        "event",
        "key_name",
        "client_id",
        "actor",
        "code",
        "remote_addr",
        "request_id",
        "detail",
    }
    assert row["at"] == clock() == ev.at
    assert (row["event"], row["key_name"], row["client_id"], row["code"]) == (
        "token.refused",
        "app.key1",
        "alice",
        40104,
    )
    assert row["detail"] == {"reason": "timestamp not current", "skewMs": 180_000}
    [read] = log.query()
    assert read.to_dict() == {**row}


def test_query_filters_and_orders_newest_first(log: AuditLog, clock: FakeClock) -> None:
    log.record("key.created", key_name="a.1", actor="cli:x")
    clock.advance(1000)
    log.record("token.issued", key_name="a.1", client_id="alice")
    clock.advance(1000)
    log.record("token.issued", key_name="a.2", client_id="bob")
    clock.advance(1000)
    log.record("key.revoked", key_name="a.1")
    assert [e.event for e in log.query()] == [
        "key.revoked",
        "token.issued",
        "token.issued",
        "key.created",
    ]
    assert [e.client_id for e in log.query(event="token.issued")] == ["bob", "alice"]
    assert [e.event for e in log.query(key_name="a.1", since_ms=clock() - 2000)] == [
        "key.revoked",
        "token.issued",
    ]
    assert len(log.query(limit=1)) == 1
    for bad in (0, 10_001, True, "5"):
        with pytest.raises(ValueError, match="limit"):
            log.query(limit=bad)  # type: ignore[arg-type]


def test_purge_removes_rows_past_the_retention(db_url: str, clock: FakeClock) -> None:
    log = AuditLog(db_url, now_ms=clock, retention_days=90)
    models.metadata.create_all(log.db.engine)
    log.record("token.issued", key_name="old")
    clock.advance(10 * DAY_MS)
    log.record("token.issued", key_name="newer")
    clock.advance(80 * DAY_MS + 1)
    assert log.purge() == 1
    assert [e.key_name for e in log.query()] == ["newer"]
    assert log.purge(older_than_days=1) == 1
    assert log.query() == []
    for bad in (0, -1, float("nan"), "90", True):
        with pytest.raises(ValueError, match="positive number of days"):
            log.purge(bad)  # type: ignore[arg-type]
    log.db.dispose()


def test_purge_works_in_batches(log: AuditLog, clock: FakeClock) -> None:
    for i in range(25):
        log.record("token.issued", key_name=f"k{i}")
    clock.advance(100 * DAY_MS)
    log.record("token.issued", key_name="keep")
    assert log.purge(batch=10) == 25
    assert [e.key_name for e in log.query()] == ["keep"]


def test_no_retention_keeps_rows(db_url: str, clock: FakeClock) -> None:
    log = AuditLog(db_url, now_ms=clock, retention_days=None)
    models.metadata.create_all(log.db.engine)
    log.record("token.issued")
    clock.advance(10_000 * DAY_MS)
    assert log.purge() == 0
    assert len(log.query()) == 1
    log.db.dispose()


# -- transactions and signals -------------------------------------------------------------


def test_rows_in_a_transaction_share_its_fate(
    log: AuditLog, received: list[tuple[Any, AuditEvent]]
) -> None:

    def failing_change() -> None:
        with log.transaction() as tx:
            tx.write("key.revoked", key_name="a.1")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        failing_change()
    assert all_rows(log) == []
    assert received == []  # no signal for what did not happen

    with log.transaction() as tx:
        tx.write("key.revoked", key_name="a.1")
        tx.write("tokens.revoked", key_name="a.1")
        assert received == []  # not before the commit
    assert [r["event"] for r in all_rows(log)] == ["key.revoked", "tokens.revoked"]
    assert [e.event for _, e in received] == ["key.revoked", "tokens.revoked"]


def test_write_inside_a_callers_own_transaction(log: AuditLog) -> None:
    with log.db.write() as conn:
        log.write(conn, "ticket.issued", actor="admin:alice")
        conn.rollback()
    assert all_rows(log) == []
    with log.db.write() as conn:
        log.write(conn, "ticket.issued", actor="admin:alice")
    assert [r["actor"] for r in all_rows(log)] == ["admin:alice"]


def test_signal_sender_is_the_app_inside_an_app_context(
    log: AuditLog, received: list[tuple[Any, AuditEvent]]
) -> None:
    app = Flask(__name__)
    with app.app_context():
        log.record("token.issued", key_name="a.1")
    log.record("token.issued", key_name="a.2")
    assert received[0][0] is app
    assert received[1][0] is log
    assert all(isinstance(e, AuditEvent) for _, e in received)


def test_disabled_log_writes_no_rows_but_still_signals(
    db_url: str, clock: FakeClock, received: list[tuple[Any, AuditEvent]]
) -> None:
    log = AuditLog(db_url, now_ms=clock, enabled=False)
    models.metadata.create_all(log.db.engine)
    log.record("token.issued")
    log.submit("token.refused", code=40101)
    with log.transaction() as tx:
        tx.write("key.created")
    assert log.flush()
    assert all_rows(log) == []
    assert [e.event for _, e in received] == ["token.issued", "token.refused", "key.created"]
    log.db.dispose()


def test_event_names_and_codes_are_checked(log: AuditLog) -> None:
    assert "key.created" in EVENTS
    for bad in ("", "Key.Created", "keycreated", "key.", "x" * 70 + ".y", None):
        with pytest.raises(ValueError, match="audit event names"):
            log.record(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        log.record("token.refused", code="40101")
    assert all_rows(log) == []


# -- the background writer ---------------------------------------------------------------


def test_submitted_events_are_written_in_batches(
    log: AuditLog, received: list[tuple[Any, AuditEvent]]
) -> None:
    for i in range(1200):
        log.submit("token.issued", key_name="a.1", client_id=f"c{i}")
    assert len(received) == 1200  # signalled at once
    assert log.flush()
    rows = all_rows(log)
    assert len(rows) == 1200
    assert [r["client_id"] for r in rows] == [f"c{i}" for i in range(1200)]
    assert log.dropped == 0


def test_flush_without_a_writer_returns_at_once(log: AuditLog) -> None:
    assert log.flush()


def _audit_inserts(log: AuditLog) -> list[int]:
    """The row count of each INSERT into the audit table from now on."""
    inserts: list[int] = []

    def count(conn: Any, cur: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO tokenreq_audit"):
            inserts.append(len(params) if many else 1)

    sa.event.listen(log.db.engine, "before_cursor_execute", count)
    return inserts


def test_events_submitted_while_the_writer_lingers_are_written_as_one_batch(log: AuditLog) -> None:
    # A linger far longer than the flush's timeout: only the flush can end it.
    log.LINGER_S = 3600.0
    inserts = _audit_inserts(log)
    for i in range(50):
        log.submit("token.issued", key_name="a.1", client_id=f"c{i}")
    assert log.flush(timeout=30)
    assert len(all_rows(log)) == 50
    assert inserts == [50]  # one batch


def test_a_flush_and_a_close_end_the_writers_linger(log: AuditLog) -> None:
    log.LINGER_S = 3600.0
    log.submit("token.issued", key_name="a.1", client_id="first")
    assert log.flush(timeout=30)
    assert [r["client_id"] for r in all_rows(log)] == ["first"]
    log.submit("token.issued", key_name="a.1", client_id="second")
    thread = log._thread
    assert thread is not None
    log.close(timeout=30)
    assert not thread.is_alive()
    assert [r["client_id"] for r in all_rows(log)] == ["first", "second"]


@pytest.mark.postgres
def test_submitted_events_are_dropped_and_counted_when_the_database_is_down(
    postgres_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    url = sa.make_url(DATABASE_URL).set(port=1).render_as_string(False)
    log = AuditLog(url, now_ms=clock)
    secret = new_secret()
    log.submit("token.issued", key_name="a.1", client_id="alice", detail={"note": secret})
    assert log.flush()
    assert log.dropped == 1
    assert "1 event(s) not written" in caplog.text
    assert secret not in caplog.text
    with pytest.raises(StoreUnavailable):
        log.record("token.issued")
    with pytest.raises(StoreUnavailable):
        log.query()
    log.close()


def test_values_no_database_can_store_are_escaped_not_dropped(
    log: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL (PostgreSQL refuses it) or a lone surrogate (not UTF-8) from a client must
    not make the batch it shares with everyone else's events fail."""
    log.submit("token.refused", key_name="app.a", client_id="alice")
    log.submit(
        "token.refused",
        key_name="app.\x00b\ud800",
        client_id="mallory\x00\udc00",
        detail={"reason": "nul \x00 here", "k\x00": ["\ud800"]},
    )
    log.submit("token.refused", key_name="app.c", client_id="carol")
    assert log.flush()
    assert log.dropped == 0
    assert "not written" not in caplog.text
    rows = all_rows(log)
    assert [(r["key_name"], r["client_id"]) for r in rows] == [
        ("app.a", "alice"),
        ("app.\\x00b\\ud800", "mallory\\x00\\udc00"),
        ("app.c", "carol"),
    ]
    assert rows[1]["detail"] == {"reason": "nul \\x00 here", "k\\x00": ["\\ud800"]}
    log.record("token.refused", client_id="durable\x00")  # a write of its own too
    assert all_rows(log)[-1]["client_id"] == "durable\\x00"


def test_a_row_the_database_refuses_does_not_drop_its_batch(
    log: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: a data error in a batch writes its rows one by one."""
    log.LINGER_S = 3600.0  # one batch: only the flush ends the linger
    log.submit("token.refused", client_id="alice")
    log.submit("token.refused", client_id="mallory", code=2**70)  # out of any integer column
    log.submit("token.refused", client_id="carol")
    assert log.flush(timeout=30)
    assert [r["client_id"] for r in all_rows(log)] == ["alice", "carol"]
    assert log.dropped == 1
    assert "1 event(s) not written" in caplog.text


def test_a_shared_database_object_is_used_as_is(tmp_path: Path, clock: FakeClock) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a.sqlite3'}", name="audit log")
    log = AuditLog(db, now_ms=clock)
    assert log.db is db


# -- never a secret ----------------------------------------------------------------------


def test_secret_looking_values_are_redacted_everywhere(
    log: AuditLog, caplog: pytest.LogCaptureFixture, received: list[tuple[Any, AuditEvent]]
) -> None:
    secret = new_secret()
    key = f"app.key1:{secret}"
    log.record(
        "token.refused",
        key_name="app.key1",
        client_id=JWT,  # a client can send anything as clientId
        request_id=secret,
        code=40101,
        detail={
            "mac": MAC,
            "capability": '{"*":["*"]}',
            "note": f"client sent {key}",
            "nested": {"list": [JWT, "fine", MAC], "accessToken": "plain"},
            "ticketish": TICKET,
            "secret": "anything",
            "obj": object(),
        },
    )
    [row] = all_rows(log)
    assert row["client_id"] == REDACTED
    assert row["request_id"] == REDACTED
    assert row["detail"] == {
        "mac": REDACTED,
        "capability": '{"*":["*"]}',
        "note": REDACTED,
        "nested": {"list": [REDACTED, "fine", REDACTED], "accessToken": REDACTED},
        "ticketish": REDACTED,
        "secret": REDACTED,
        "obj": REDACTED,
    }
    text = json.dumps(row) + caplog.text + repr(received)
    for value in (secret, JWT, MAC, TICKET):
        assert value not in text
    assert "redacted a secret-looking value" in caplog.text


def test_a_full_key_sent_as_a_key_name_is_redacted_where_it_is_quoted(
    log: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A real key name has no ``:``; a static key's secret looks like nothing in particular."""
    full = "app.key1:plain-static-secret\x01"
    log.record(
        "token.refused",
        key_name=full,
        client_id=full,
        detail={"reason": f"No key named {full!r} is known", "other": "app.key2:kept"},
    )
    log.record("token.refused", key_name="app.key3:")  # nothing after the ':'
    first, second = all_rows(log)
    assert first["key_name"] == f"app.key1:{REDACTED}"
    assert first["client_id"] == f"app.key1:{REDACTED}"
    assert first["detail"] == {
        "reason": f"No key named 'app.key1:{REDACTED}' is known",
        "other": "app.key2:kept",
    }
    assert second["key_name"] == "app.key3:"
    assert "plain-static-secret" not in json.dumps(first) + caplog.text
    assert caplog.text.count("redacted a secret-looking value") == 1


def test_long_values_are_cut_to_their_column(log: AuditLog) -> None:
    log.record(
        "token.refused",
        client_id="c" * 400,
        actor="a" * 300,
        remote_addr="r" * 100,
        request_id="q" * 200,
        detail={"text": "x" * 5000},
    )
    [row] = all_rows(log)
    assert len(row["client_id"]) == 255
    assert len(row["actor"]) == 255
    assert len(row["remote_addr"]) == 64
    assert len(row["request_id"]) == 128
    assert len(row["detail"]["text"]) == 1000


def test_huge_detail_is_replaced(log: AuditLog) -> None:
    log.record("token.refused", detail={f"k{i}": "v" * 900 for i in range(50)})
    [row] = all_rows(log)
    assert row["detail"] == {"truncated": True}


def test_nothing_secret_reaches_logs_when_a_write_fails(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"sqlite:///{tmp_path / 'wrong-table.sqlite3'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # an audit table without the columns: every insert fails
        conn.exec_driver_sql("CREATE TABLE tokenreq_audit (id INTEGER PRIMARY KEY)")
    engine.dispose()
    log = AuditLog(url, now_ms=clock)
    secret = new_secret()
    with pytest.raises(StoreUnavailable) as info:
        log.record("token.issued", detail={"note": f"x {secret}"}, client_id="alice")
    assert secret not in caplog.text
    assert secret not in str(info.value)
    assert "[parameters" not in caplog.text
    log.db.dispose()


@pytest.mark.parametrize("jti", ["eyJxQ2b9Zk3aLmNoPqRsTu", "a1tkr_b2c3d4e5f6g7h8i9"])
def test_random_ids_are_not_mistaken_for_secrets(
    log: AuditLog, jti: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A jti is 128 random bits of base64url: 'eyJ' or 'tkr_' may occur in it."""
    with caplog.at_level(logging.WARNING):
        ev = log.event("token.issued", client_id=jti, detail={"jti": jti})
    assert ev.client_id == jti
    assert ev.detail == {"jti": jti}
    assert "redacted" not in caplog.text
