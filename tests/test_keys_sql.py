"""Managed keys in SQL, on real SQLite files and a real PostgreSQL.

Wacht's checklist at the store level (rotate: the old secret is refused;
revoke: immediate), rotation grace on an injected clock, a second store
instance standing for another worker or host (it must see every change on
its very next call), encryption-key rotation, fail-closed behaviour, audit
rows in the change's own transaction, and no secret anywhere but the
one-time answer.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from flask_tokenreq import models
from flask_tokenreq.audit import AuditEvent
from flask_tokenreq.errors import (
    ConfigError,
    Conflict,
    InvalidParameter,
    KeyExpired,
    KeyRevoked,
    NotFound,
    StoreUnavailable,
)
from flask_tokenreq.keys import ApiKey, KeyStore, changes, parse_key
from flask_tokenreq.keys.base import MAX_EXPIRES_MS
from flask_tokenreq.keys.changes import ChangeCounter
from flask_tokenreq.keys.secret import PREFIX, check_secret_format, hint
from flask_tokenreq.keys.sql import REAUTH_MARGIN_MS, REVOCATION_KEEP_MS, SqlKeyStore
from flask_tokenreq.signals import audit_event
from tests.conftest import DATABASE_URL, FakeClock
from tests.dbs import FERNET_1, FERNET_2, FERNET_OTHER, TcpProxy, db_url, pg_schema

__all__ = ["db_url", "pg_schema"]  # fixtures used by name

MakeStore = Callable[..., SqlKeyStore]


@pytest.fixture
def make_store(db_url: str, clock: FakeClock) -> Iterator[MakeStore]:
    """Store instances on one database: each call is another worker (or host)."""
    made: list[SqlKeyStore] = []

    def make(keys: list[str] | None = None, **kwargs: Any) -> SqlKeyStore:
        kwargs.setdefault("now_ms", clock)
        store = SqlKeyStore(db_url, keys or [FERNET_1], **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> SqlKeyStore:
    s = make_store()
    s.create_tables()
    s.check()
    return s


@pytest.fixture
def worker2(make_store: MakeStore, store: SqlKeyStore) -> SqlKeyStore:
    """Another process's store on the same database."""
    return make_store()


def rows(store: SqlKeyStore, table: sa.Table) -> list[dict[str, Any]]:
    with store.database.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table)).mappings()]


def audit_events(store: SqlKeyStore) -> list[str]:
    return [r["event"] for r in sorted(rows(store, models.audit), key=lambda r: r["id"])]


def generation(store: SqlKeyStore) -> int:
    with store.database.engine.connect() as conn:
        return int(conn.execute(sa.select(models.generation.c.value)).scalar_one())


# -- create, get, list ------------------------------------------------------------------


def test_create_returns_the_full_key_once_and_get_finds_it(
    store: SqlKeyStore, worker2: SqlKeyStore
) -> None:
    key, full = store.create("CI Key", {"chan:*": ["publish", "subscribe"]}, actor="cli:alice")
    key_name, secret = parse_key(full)
    assert key_name == key.key_name
    assert key_name.startswith("tokenreq.")
    assert secret.startswith(PREFIX)
    assert check_secret_format(secret)
    assert len(secret.encode()) >= 32
    assert isinstance(store, KeyStore)

    found = worker2.get(key_name)
    assert isinstance(found, ApiKey)
    assert found.secret == secret
    assert found.managed
    assert found.status == "active"
    assert found.name == "CI Key"
    assert found.capability.to_dict() == {"chan:*": ["publish", "subscribe"]}
    assert found.verifying_secrets(0) == (secret,)
    assert secret not in repr(found)

    [info] = worker2.list()
    assert info.key_name == key_name
    assert info.hint == hint(secret)
    assert info.display == f"{key_name}:{hint(secret)}"
    assert secret not in json.dumps(info.to_dict(0))
    assert secret not in repr(info)
    assert info.to_dict(0)["status"] == "active"


def test_unknown_and_odd_key_names_are_none(store: SqlKeyStore) -> None:
    for name in ("tokenreq.nope", "", "x" * 300, "a.b\x00"):
        assert store.get(name) is None
        assert store.state(name) is None
        assert store.describe(name) is None
    assert store.get(42) is None  # type: ignore[arg-type]


def test_app_id_is_configurable(make_store: MakeStore, store: SqlKeyStore) -> None:
    other = make_store(app_id="xVLyHw")
    key, _ = other.create("k")
    assert key.key_name.startswith("xVLyHw.")
    with pytest.raises(ConfigError):
        make_store(app_id="a.b")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, InvalidParameter),
        ({"name": "x" * 201}, InvalidParameter),
        ({"name": "tab\there"}, InvalidParameter),
        ({"name": "k", "capability": "not json"}, Exception),
        ({"name": "k", "capability": {}}, InvalidParameter),
        ({"name": "k", "expires_ms": 1}, InvalidParameter),
        ({"name": "k", "expires_ms": True}, InvalidParameter),
        # Past the year 9999, or past a 64-bit integer: a 400, never a database error.
        ({"name": "k", "expires_ms": MAX_EXPIRES_MS + 1}, InvalidParameter),
        ({"name": "k", "expires_ms": 2**63}, InvalidParameter),
        ({"name": "k", "actor": 5}, InvalidParameter),
    ],
)
def test_create_refuses_bad_input_and_writes_nothing(
    store: SqlKeyStore, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        store.create(**kwargs)
    assert getattr(info.value, "status", 400) == 400
    assert store.list("all") == []
    assert audit_events(store) == []


def test_the_latest_expires_is_the_end_of_the_year_9999(
    store: SqlKeyStore, worker2: SqlKeyStore
) -> None:
    key, _ = store.create("k", expires_ms=MAX_EXPIRES_MS)
    info = worker2.describe(key.key_name)
    assert info is not None
    assert info.expires_ms == MAX_EXPIRES_MS
    with pytest.raises(InvalidParameter, match="253402300799999"):
        store.create("k", expires_ms=MAX_EXPIRES_MS + 1)


# -- rotate (Wacht: "rotate returns new secret and old secret is rejected") --------------


def test_rotate_without_grace_refuses_the_old_secret_at_once_on_every_worker(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    key, old_full = store.create("k")
    assert worker2.get(key.key_name) is not None  # worker 2 has seen the key before
    new_full = store.rotate(key.key_name, actor="cli:alice")
    _, old = parse_key(old_full)
    name, new = parse_key(new_full)
    assert name == key.key_name
    assert new != old
    assert check_secret_format(new)
    for s in (store, worker2):
        got = s.get(key.key_name)
        assert got is not None
        assert got.verifying_secrets(clock()) == (new,)
        assert old not in got.verifying_secrets(clock())
    # Only the current secret is stored.
    assert len(rows(store, models.key_secrets)) == 1
    assert audit_events(store) == ["key.created", "key.rotated"]


def test_rotate_with_grace_keeps_the_old_secret_until_the_grace_ends(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    key, old_full = store.create("k")
    _, old = parse_key(old_full)
    _, new = parse_key(store.rotate(key.key_name, grace_ms=60_000))
    got = worker2.get(key.key_name)
    assert got is not None
    assert got.verifying_secrets(clock()) == (new, old)  # newest first
    clock.advance(60_000)  # the last millisecond of the grace
    got = worker2.get(key.key_name)
    assert got is not None
    assert got.verifying_secrets(clock()) == (new, old)
    clock.advance(1)
    got = worker2.get(key.key_name)
    assert got is not None
    assert got.verifying_secrets(clock()) == (new,)
    assert old not in [g.value for g in got.previous_secrets]


def test_rotating_twice_in_grace_keeps_both_then_zero_grace_drops_all(
    store: SqlKeyStore, clock: FakeClock
) -> None:
    key, first_full = store.create("k")
    first = parse_key(first_full)[1]
    second = parse_key(store.rotate(key.key_name, grace_ms=10_000))[1]
    clock.advance(1000)
    third = parse_key(store.rotate(key.key_name, grace_ms=10_000))[1]
    got = store.get(key.key_name)
    assert got is not None
    assert got.verifying_secrets(clock()) == (third, second, first)
    fourth = parse_key(store.rotate(key.key_name, grace_ms=0))[1]
    got = store.get(key.key_name)
    assert got is not None
    assert got.verifying_secrets(clock()) == (fourth,)


def test_expired_grace_secrets_are_deleted_at_the_next_rotation(
    store: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k")
    store.rotate(key.key_name, grace_ms=1000)
    clock.advance(5000)
    store.rotate(key.key_name, grace_ms=1000)
    # The current secret and the one just put in grace; the expired one is gone.
    assert len(rows(store, models.key_secrets)) == 2


@pytest.mark.parametrize("grace", [-1, 31 * 86_400_000, 2**63, 1.5, "60s", True])
def test_rotate_refuses_a_bad_grace(store: SqlKeyStore, grace: Any) -> None:
    key, _ = store.create("k")
    with pytest.raises(InvalidParameter):
        store.rotate(key.key_name, grace_ms=grace)
    assert audit_events(store) == ["key.created"]


def test_rotate_refuses_unknown_revoked_and_expired_keys(
    store: SqlKeyStore, clock: FakeClock
) -> None:
    with pytest.raises(NotFound):
        store.rotate("tokenreq.nope")
    revoked, _ = store.create("r")
    store.revoke(revoked.key_name, "leaked")
    with pytest.raises(Conflict):
        store.rotate(revoked.key_name)
    expiring, _ = store.create("e", expires_ms=clock() + 1000)
    clock.advance(1000)
    with pytest.raises(Conflict):
        store.rotate(expiring.key_name)
    assert audit_events(store) == ["key.created", "key.revoked", "key.created"]


# -- revoke (Wacht: "revoke removes active status immediately") ---------------------------


def test_revoke_is_seen_by_every_worker_on_its_next_call(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k")
    # Worker 2 has the key's state in memory.
    state = worker2.state(key.key_name)
    assert state is not None
    assert state.status == "active"
    assert not worker2.token_revoked(key.key_name, "alice", None, clock() - 1)

    info = store.revoke(key.key_name, "leaked in CI logs", actor="cli:alice")
    assert info.status == "revoked"
    assert info.revoked_reason == "leaked in CI logs"
    assert info.revoked_ms == clock()

    got = worker2.get(key.key_name)
    assert got is not None
    assert got.status == "revoked"
    with pytest.raises(KeyRevoked) as exc:
        got.check_active(clock())
    assert exc.value.code == 40131
    state = worker2.state(key.key_name)
    assert state is not None
    assert state.status == "revoked"
    # Every token made from the key is refused (40141), whatever its clientId.
    assert worker2.token_revoked(key.key_name, None, None, clock() - 1)
    assert worker2.token_revoked(key.key_name, "bob", "rk", clock())
    assert [i.key_name for i in worker2.list("revoked")] == [key.key_name]
    assert worker2.list("active") == []


def test_revoke_refuses_twice_unknown_and_bad_reasons(store: SqlKeyStore) -> None:
    key, _ = store.create("k")
    for reason in ("", "   ", None, "x" * 501):
        with pytest.raises(InvalidParameter):
            store.revoke(key.key_name, reason)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.revoke("tokenreq.nope", "why")
    store.revoke(key.key_name, "why")
    with pytest.raises(Conflict) as info:
        store.revoke(key.key_name, "again")
    assert info.value.code == 40900
    assert info.value.status == 409
    assert audit_events(store) == ["key.created", "key.revoked"]


# -- expiry ------------------------------------------------------------------------------


def test_past_expires_the_key_acts_as_revoked_with_40132(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k", expires_ms=clock() + 10_000)
    got = worker2.get(key.key_name)
    assert got is not None
    got.check_active(clock())
    clock.advance(10_000)
    got = worker2.get(key.key_name)
    assert got is not None
    with pytest.raises(KeyExpired) as info:
        got.check_active(clock())
    assert info.value.code == 40132
    state = worker2.state(key.key_name)
    assert state is not None
    assert state.expired(clock())
    assert worker2.list("active") == []
    assert [i.key_name for i in worker2.list("expired")] == [key.key_name]
    assert worker2.list("all")[0].to_dict(clock())["status"] == "expired"
    with pytest.raises(InvalidParameter):
        worker2.list("bogus")  # type: ignore[arg-type]


# -- token revocation (Ably revokeTokens) --------------------------------------------------


def test_revoke_tokens_returns_ablys_batch_result(store: SqlKeyStore, clock: FakeClock) -> None:
    key, _ = store.create("k")
    now = clock()
    result = store.revoke_tokens(
        key.key_name,
        ["clientId:alice", "revocationKey:session-7", "channel:news", "nocolon", "clientId:"],
    )
    assert result["successCount"] == 2
    assert result["failureCount"] == 3
    ok = {"issuedBefore": now, "appliesAt": now}
    assert result["results"][:2] == [
        {"target": "clientId:alice", **ok},
        {"target": "revocationKey:session-7", **ok},
    ]
    for failure in result["results"][2:]:
        assert set(failure) == {"target", "error"}
        assert failure["error"]["statusCode"] == 400
        assert failure["error"]["code"] == 40003
    assert audit_events(store) == ["key.created", "tokens.revoked"]
    [row] = [r for r in rows(store, models.audit) if r["event"] == "tokens.revoked"]
    assert row["detail"]["targets"] == ["clientId:alice", "revocationKey:session-7"]


def test_revoked_tokens_are_refused_on_every_worker(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k")
    issued = clock() - 1
    assert not worker2.token_revoked(key.key_name, "alice", None, issued)  # cached now
    store.revoke_tokens(key.key_name, ["clientId:alice", "revocationKey:rk-1"])
    assert worker2.token_revoked(key.key_name, "alice", None, issued)
    assert worker2.token_revoked(key.key_name, "carol", "rk-1", issued)
    # Other clients, and tokens issued from issuedBefore on, are not affected.
    assert not worker2.token_revoked(key.key_name, "bob", None, issued)
    assert not worker2.token_revoked(key.key_name, "alice", None, clock())
    assert not worker2.token_revoked(key.key_name, None, None, issued)
    # A key this store does not manage (a static key) is not its business.
    assert not worker2.token_revoked("static.key", "alice", None, issued)
    # A wildcard token was issued to clientId "*": "clientId:alice" leaves it,
    # "clientId:*" revokes it (docs/keys.md).
    assert not worker2.token_revoked(key.key_name, "*", None, issued)
    store.revoke_tokens(key.key_name, ["clientId:*"])
    assert worker2.token_revoked(key.key_name, "*", None, issued)


def test_issued_before_and_the_reauth_margin(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k")
    start = clock()
    clock.advance(5000)
    result = store.revoke_tokens(
        key.key_name, ["clientId:alice"], issued_before=start + 1000, allow_reauth_margin=True
    )
    [entry] = result["results"]
    assert entry == {
        "target": "clientId:alice",
        "issuedBefore": start + 1000,
        "appliesAt": clock() + REAUTH_MARGIN_MS,
    }
    # Not yet: the margin lets the client fetch a new token first.
    assert not worker2.token_revoked(key.key_name, "alice", None, start)
    clock.advance(REAUTH_MARGIN_MS)
    assert worker2.token_revoked(key.key_name, "alice", None, start)
    assert worker2.token_revoked(key.key_name, "alice", None, start + 999)
    assert not worker2.token_revoked(key.key_name, "alice", None, start + 1000)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([], {}),
        ("clientId:alice", {}),
        ({"clientId:a": 1}, {}),  # a JSON object, not an array
        (["clientId:a"] * 101, {}),
        (["clientId:a"], {"issued_before": "now"}),
        (["clientId:a"], {"issued_before": 2**63}),
        (["clientId:a"], {"allow_reauth_margin": "yes"}),
    ],
)
def test_revoke_tokens_refuses_bad_requests(
    store: SqlKeyStore, args: Any, kwargs: dict[str, Any]
) -> None:
    key, _ = store.create("k")
    with pytest.raises(InvalidParameter):
        store.revoke_tokens(key.key_name, args, **kwargs)
    assert rows(store, models.token_revocations) == []


def test_issued_before_in_the_future_or_over_an_hour_ago_is_refused(
    store: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k")
    for when in (clock() + 1, clock() - 3_600_001):
        with pytest.raises(InvalidParameter):
            store.revoke_tokens(key.key_name, ["clientId:a"], issued_before=when)
    store.revoke_tokens(key.key_name, ["clientId:a"], issued_before=clock() - 3_600_000)


def test_revoke_tokens_of_an_unknown_key(store: SqlKeyStore) -> None:
    with pytest.raises(NotFound):
        store.revoke_tokens("tokenreq.nope", ["clientId:a"])
    with pytest.raises(NotFound):
        store.revoke_tokens("tokenreq.nope", ["channel:a"])


def test_old_revocations_are_purged(store: SqlKeyStore, clock: FakeClock) -> None:
    key, _ = store.create("k")
    store.revoke_tokens(key.key_name, ["clientId:a"])
    clock.advance(1000)
    store.revoke_tokens(key.key_name, ["clientId:b"])
    clock.advance(REVOCATION_KEEP_MS)
    assert store.purge_revocations() == 1
    assert [r["value"] for r in rows(store, models.token_revocations)] == ["b"]
    for keep in (-1, 2**63):
        with pytest.raises(InvalidParameter):
            store.purge_revocations(keep)


def test_revoke_tokens_drops_revocations_that_can_no_longer_match(
    store: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k")
    store.revoke_tokens(key.key_name, ["clientId:a"])
    clock.advance(REVOCATION_KEEP_MS)
    assert store.token_revoked(key.key_name, "a", None, clock() - REVOCATION_KEEP_MS - 1)
    clock.advance(1)
    store.revoke_tokens(key.key_name, ["clientId:b"])
    assert [r["value"] for r in rows(store, models.token_revocations)] == ["b"]


# -- the non-secret cache ----------------------------------------------------------------


def count_statements(store: SqlKeyStore) -> list[str]:
    """Every SQL statement the database driver runs for ``store`` from now on.

    Recorded at the driver (SQLite's trace callback, a psycopg cursor
    subclass), below SQLAlchemy, since the hot paths run prepared SQL on
    driver connections.
    """
    seen: list[str] = []

    def record(statement: str) -> None:
        text = statement.strip(" ;\n").upper()
        # Transaction control and the pool's liveness ping (";") are not reads.
        if text and not text.startswith(("BEGIN", "PRAGMA", "SET", "COMMIT", "ROLLBACK")):
            seen.append(statement)

    def on_checkout(dbapi_conn: Any, record_: Any, proxy: Any) -> None:
        if store.database.backend == "sqlite":
            dbapi_conn.set_trace_callback(record)
        else:
            import psycopg

            class Recording(psycopg.Cursor):  # type: ignore[type-arg]
                def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                    record(str(query))
                    return super().execute(query, *args, **kwargs)

            dbapi_conn.cursor_factory = Recording

    event.listen(store.database.engine.pool, "checkout", on_checkout)
    # On SQLite, the hot-path reads run on each thread's own connection,
    # outside the pool: trace those already open too.
    for reader in store.database._all_readers:
        reader.conn.set_trace_callback(record)
    return seen


def test_a_valid_cache_costs_one_primary_key_read(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    """On PostgreSQL, the generation row; on SQLite, not even that: the change
    counter beside the database file says that nothing changed."""
    key, _ = store.create("k")
    store.revoke_tokens(key.key_name, ["clientId:alice"])
    worker2.token_revoked(key.key_name, "alice", None, clock() - 1)  # fills the cache
    seen = count_statements(worker2)
    for _ in range(5):
        assert worker2.token_revoked(key.key_name, "alice", None, clock() - 1)
    if store.database.backend == "sqlite":
        assert seen == []
    else:
        assert len(seen) == 5
        assert all("tokenreq_generation" in s for s in seen)
    # A change anywhere invalidates it: the next call reads the key again.
    _other, _ = store.create("other")
    seen.clear()
    assert worker2.token_revoked(key.key_name, "alice", None, clock() - 1)
    assert len(seen) > 1


def counter_file(store: SqlKeyStore) -> Path:
    assert store.database.sqlite_file is not None
    return Path(store.database.sqlite_file + changes.SUFFIX)


def counter_of(store: SqlKeyStore) -> ChangeCounter:
    """The store's own change counter (the store closes it)."""
    counter = store._change_counter()
    assert counter is not None
    assert counter.path == str(counter_file(store))
    return counter


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_each_change_moves_the_counter_beside_the_database(
    store: SqlKeyStore, worker2: SqlKeyStore
) -> None:
    key, _ = store.create("k")
    assert worker2.state(key.key_name) is not None
    counter = counter_of(store)
    before = counter.read()
    assert before % 2 == 0  # no change in progress
    store.revoke_tokens(key.key_name, ["clientId:a"])
    store.purge_revocations()
    store.revoke(key.key_name, "r")
    assert counter.read() == before + 6
    state = worker2.state(key.key_name)
    assert state is not None
    assert state.status == "revoked"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_change_left_half_done_makes_every_process_read_the_database(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    """An odd counter (a process died between its change's start and end) is a change
    in progress: readers then read the database on every call, and see a change made
    without the counter at once; the next change through the store ends that."""
    key, _ = store.create("k")
    assert worker2.token_revoked(key.key_name, "alice", None, clock()) is False  # cached
    counter = counter_of(store)
    counter._write(counter.read() + 1)  # as a process that died mid-change leaves it
    with store.database.engine.begin() as conn:  # a change the counter does not show
        conn.execute(
            models.keys.update()
            .where(models.keys.c.key_name == key.key_name)
            .values(status="revoked", revoked_reason="by hand")
        )
        conn.execute(models.generation.update().values(value=models.generation.c.value + 1))
    assert worker2.token_revoked(key.key_name, "alice", None, clock()) is True
    other, _ = store.create("other")  # steps over the odd value
    assert counter.read() % 2 == 0
    assert worker2.state(other.key_name) is not None
    seen = count_statements(worker2)
    assert worker2.state(other.key_name) is not None
    assert seen == []  # cached again


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_change_that_cannot_reach_the_counter_is_not_made(db_url: str, clock: FakeClock) -> None:
    first = SqlKeyStore(db_url, [FERNET_1], now_ms=clock)
    first.create_tables()
    key, _ = first.create("k")
    first.close()
    path = counter_file(first)
    path.unlink()
    path.mkdir()  # what the store cannot open as its counter
    store = SqlKeyStore(db_url, [FERNET_1], now_ms=clock)
    try:
        with pytest.raises(StoreUnavailable, match="change counter"):
            store.revoke(key.key_name, "r")
        state = store.state(key.key_name)  # reads go to the database
        assert state is not None
        assert state.status == "active"
        assert store.state(key.key_name) == state
    finally:
        store.close()


def test_the_cache_holds_no_secret(store: SqlKeyStore, clock: FakeClock) -> None:
    key, full = store.create("k")
    store.state(key.key_name)
    store.get(key.key_name)
    _, secret = parse_key(full)
    assert secret not in repr(store._snapshot)
    assert secret not in repr(vars(store))


# -- encryption at rest ------------------------------------------------------------------


def test_secrets_are_stored_encrypted(store: SqlKeyStore) -> None:
    _, full = store.create("k")
    _, secret = parse_key(full)
    dump = json.dumps({t.name: rows(store, t) for t in models.metadata.sorted_tables}, default=str)
    assert secret not in dump
    assert secret[len(PREFIX) : -6] not in dump


def test_reencrypt_moves_every_secret_to_the_newest_key(
    store: SqlKeyStore, make_store: MakeStore, clock: FakeClock
) -> None:
    a, a_full = store.create("a")
    b, _b_full = store.create("b")
    store.rotate(b.key_name, grace_ms=60_000)
    # Step 1-2 of an encryption-key rotation: the new key first, the old one kept.
    both = make_store([FERNET_2, FERNET_1])
    both.check()
    assert both.reencrypt(actor="cli:ops") == 3
    # Step 3: only the new key configured: everything still decrypts.
    new_only = make_store([FERNET_2])
    new_only.check()
    got = new_only.get(a.key_name)
    assert got is not None
    assert got.secret == parse_key(a_full)[1]
    got_b = new_only.get(b.key_name)
    assert got_b is not None
    assert len(got_b.verifying_secrets(clock())) == 2
    # A host still on the old key alone is told at start, not per request.
    with pytest.raises(ConfigError, match="TOKENREQ_KEY_ENCRYPTION_KEYS"):
        make_store([FERNET_1]).check()
    assert audit_events(store)[-1] == "key.reencrypted"


def test_reencrypt_changes_nothing_when_a_secret_cannot_be_decrypted(
    store: SqlKeyStore, make_store: MakeStore
) -> None:
    store.create("a")
    before = rows(store, models.key_secrets)
    with pytest.raises(ConfigError):
        make_store([FERNET_2]).reencrypt()
    assert rows(store, models.key_secrets) == before
    assert audit_events(store) == ["key.created"]


def test_wrong_encryption_key_is_a_config_error_at_check_and_503_not_500_later(
    store: SqlKeyStore, make_store: MakeStore
) -> None:
    key, full = store.create("k")
    wrong = make_store([FERNET_OTHER])
    with pytest.raises(ConfigError) as info:
        wrong.check()
    message = str(info.value)
    assert "TOKENREQ_KEY_ENCRYPTION_KEYS" in message
    assert FERNET_OTHER not in message
    assert FERNET_1 not in message
    with pytest.raises(StoreUnavailable) as exc:
        wrong.get(key.key_name)
    assert exc.value.status == 503
    assert exc.value.code == 50003
    assert parse_key(full)[1] not in str(exc.value)


def test_wrong_key_on_an_empty_database_is_caught_by_the_canary(
    store: SqlKeyStore, make_store: MakeStore
) -> None:
    with pytest.raises(ConfigError, match="canary"):
        make_store([FERNET_OTHER]).check()


def test_a_key_missing_from_the_list_is_named_at_check(
    store: SqlKeyStore, make_store: MakeStore
) -> None:
    store.create("k")
    # The canary was rewrapped under FERNET_2 by another host, this secret was not.
    make_store([FERNET_2, FERNET_1])._seed_canary()
    with store.database.engine.begin() as conn:
        conn.execute(models.meta.update().values(encryption_canary=None))
    lagging = make_store([FERNET_2])
    with pytest.raises(ConfigError, match="cannot decrypt 1 of 1"):
        lagging.check()


@pytest.mark.parametrize(
    "keys",
    [FERNET_1, [], ["not-a-fernet-key"], [FERNET_1, "short"], [b"bytes"], None],
)
def test_encryption_keys_are_validated_without_echoing_them(db_url: str, keys: Any) -> None:
    with pytest.raises(ConfigError) as info:
        SqlKeyStore(db_url, keys)
    assert "TOKENREQ_KEY_ENCRYPTION_KEYS" in str(info.value)
    assert FERNET_1 not in str(info.value)


# -- schema ------------------------------------------------------------------------------


def test_check_before_tables_exist_says_how_to_create_them(make_store: MakeStore) -> None:
    with pytest.raises(ConfigError, match="flask tokenreq db init"):
        make_store().check()


def test_create_tables_is_idempotent_and_records_the_schema_version(store: SqlKeyStore) -> None:
    store.create_tables()
    store.create_tables()
    [meta] = rows(store, models.meta)
    assert meta["schema_version"] == models.SCHEMA_VERSION == 1
    assert len(rows(store, models.generation)) == 1


def test_a_newer_schema_version_is_refused(store: SqlKeyStore) -> None:
    with store.database.engine.begin() as conn:
        conn.execute(models.meta.update().values(schema_version=2))
    with pytest.raises(ConfigError, match="upgrade flask-tokenreq"):
        store.check()


def test_every_change_bumps_the_generation(store: SqlKeyStore) -> None:
    start = generation(store)
    key, _ = store.create("k")
    store.rotate(key.key_name)
    store.revoke_tokens(key.key_name, ["clientId:a"])
    store.revoke(key.key_name, "r")
    assert generation(store) == start + 4


# -- audit in the same transaction -------------------------------------------------------


def fail_audit_inserts(store: SqlKeyStore, event_name: str) -> None:
    """A real database trigger that makes the audit insert of ``event_name`` fail."""
    with store.database.engine.begin() as conn:
        if store.database.backend == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER fail_audit BEFORE INSERT ON tokenreq_audit "
                f"WHEN NEW.event = '{event_name}' BEGIN SELECT RAISE(ABORT, 'audit down'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'audit down'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER fail_audit BEFORE INSERT ON tokenreq_audit FOR EACH ROW "
                f"WHEN (NEW.event = '{event_name}') EXECUTE FUNCTION fail_audit()"
            )


def allow_audit_inserts(store: SqlKeyStore) -> None:
    with store.database.engine.begin() as conn:
        if store.database.backend == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER fail_audit")
        else:
            conn.exec_driver_sql("DROP TRIGGER fail_audit ON tokenreq_audit")
            conn.exec_driver_sql("DROP FUNCTION fail_audit()")


def test_a_change_whose_audit_row_fails_is_not_made(
    store: SqlKeyStore, worker2: SqlKeyStore, clock: FakeClock
) -> None:
    key, _ = store.create("k")
    gen = generation(store)
    for event_name, change in (
        ("key.revoked", lambda: store.revoke(key.key_name, "r")),
        ("key.rotated", lambda: store.rotate(key.key_name)),
        ("tokens.revoked", lambda: store.revoke_tokens(key.key_name, ["clientId:a"])),
        ("key.created", lambda: store.create("other")),
    ):
        fail_audit_inserts(store, event_name)
        secrets_before = rows(store, models.key_secrets)
        with pytest.raises(StoreUnavailable):
            change()
        allow_audit_inserts(store)
        assert rows(store, models.key_secrets) == secrets_before
    got = worker2.get(key.key_name)
    assert got is not None
    assert got.status == "active"
    assert rows(store, models.token_revocations) == []
    assert [i.key_name for i in store.list("all")] == [key.key_name]
    assert generation(store) == gen
    assert audit_events(store) == ["key.created"]


def test_audit_rows_name_the_change(store: SqlKeyStore, clock: FakeClock) -> None:
    key, _ = store.create("CI Key", actor="cli:alice")
    store.rotate(key.key_name, grace_ms=5000, actor="admin:bob")
    store.revoke(key.key_name, "leaked", actor="admin:bob")
    events = store.audit.query(key_name=key.key_name)
    assert [(e.event, e.actor) for e in events] == [
        ("key.revoked", "admin:bob"),
        ("key.rotated", "admin:bob"),
        ("key.created", "cli:alice"),
    ]
    assert events[0].detail == {"reason": "leaked"}
    assert events[1].detail == {"grace": 5000, "graceUntil": clock() + 5000}
    assert all(e.at == clock() for e in events)


def test_an_audit_signal_receiver_can_change_keys(store: SqlKeyStore, worker2: SqlKeyStore) -> None:
    """The signals go out once the change is committed and the change counter
    (SQLite) released: a receiver's own key change does not deadlock."""
    one, _ = store.create("one")
    two, _ = store.create("two")
    seen: list[str] = []

    def revoke_sibling(sender: Any, event: AuditEvent, **extra: Any) -> None:
        if event.key_name in (one.key_name, two.key_name):
            seen.append(event.event)
        if event.event == "key.revoked" and event.key_name == one.key_name:
            store.revoke(two.key_name, "sibling of a revoked key")

    audit_event.connect(revoke_sibling)
    try:
        change = threading.Thread(target=store.revoke, args=(one.key_name, "leaked"), daemon=True)
        change.start()
        change.join(10)
        assert not change.is_alive(), "a key change from an audit_event receiver hung"
    finally:
        audit_event.disconnect(revoke_sibling)
    assert seen == ["key.revoked", "key.revoked"]
    two_info = worker2.describe(two.key_name)
    assert two_info is not None
    assert two_info.status == "revoked"
    worker2.create("three")  # nothing is left holding the change lock


def test_audit_off_writes_no_rows_but_changes_still_happen(make_store: MakeStore) -> None:
    s = make_store(audit=False)
    s.create_tables()
    key, _ = s.create("k")
    s.revoke(key.key_name, "r")
    assert rows(s, models.audit) == []


# -- no secret anywhere ------------------------------------------------------------------


def test_no_secret_in_any_row_log_line_or_error(
    store: SqlKeyStore, make_store: MakeStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    errors: list[str] = []
    key, full = store.create("k", actor="cli:a")
    shown.append(full)
    shown.append(store.rotate(key.key_name, grace_ms=1000))
    shown.append(store.rotate(key.key_name))
    store.revoke_tokens(key.key_name, ["clientId:alice"])
    store.get(key.key_name)
    store.state(key.key_name)
    store.list("all")
    both = make_store([FERNET_2, FERNET_1])
    both.reencrypt()
    for attempt in (
        lambda: make_store([FERNET_OTHER]).check(),
        lambda: make_store([FERNET_OTHER]).get(key.key_name),
        lambda: store.rotate("tokenreq.nope"),
    ):
        try:
            attempt()
        except Exception as exc:
            errors.append(f"{exc!r} {exc}")
    store.revoke(key.key_name, "done")
    assert len(errors) == 3

    secrets = [parse_key(f)[1] for f in shown]
    randoms = [s[len(PREFIX) : -6] for s in secrets]
    dump = json.dumps({t.name: rows(store, t) for t in models.metadata.sorted_tables}, default=str)
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for text in (dump, logs, "\n".join(errors), repr(store.list("all"))):
        for value in secrets + randoms + [FERNET_1, FERNET_2, FERNET_OTHER]:
            assert value not in text


# -- failure: fail closed ----------------------------------------------------------------


@pytest.mark.postgres
def test_database_unreachable_is_store_unavailable(postgres_url: str, clock: FakeClock) -> None:
    url = sa.make_url(DATABASE_URL).set(host="127.0.0.1", port=1).render_as_string(False)
    s = SqlKeyStore(url, [FERNET_1], now_ms=clock)
    for call in (
        s.create_tables,
        s.check,
        lambda: s.get("tokenreq.x"),
        lambda: s.state("tokenreq.x"),
        lambda: s.token_revoked("tokenreq.x", "a", None, 0),
        lambda: s.create("k"),
        lambda: s.list(),
    ):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert info.value.status == 503
        assert info.value.code == 50003


def test_sqlite_file_that_cannot_be_opened_is_store_unavailable(
    tmp_path: Path, clock: FakeClock
) -> None:
    (tmp_path / "file").write_text("not a directory")
    s = SqlKeyStore(f"sqlite:///{tmp_path}/file/keys.db", [FERNET_1], now_ms=clock)
    with pytest.raises(StoreUnavailable):
        s.create_tables()
    with pytest.raises(StoreUnavailable):
        s.get("tokenreq.x")


@pytest.mark.postgres
def test_database_lost_after_start_fails_closed_even_with_a_warm_cache(
    pg_schema: str, clock: FakeClock
) -> None:
    url = sa.make_url(pg_schema)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    s = SqlKeyStore(through, [FERNET_1], now_ms=clock)
    try:
        s.create_tables()
        s.check()
        key, _ = s.create("k")
        assert not s.token_revoked(key.key_name, "a", None, clock())  # cache warm
        proxy.cut()
        for call in (
            lambda: s.token_revoked(key.key_name, "a", None, clock()),
            lambda: s.state(key.key_name),
            lambda: s.get(key.key_name),
            lambda: s.revoke(key.key_name, "r"),
        ):
            with pytest.raises(StoreUnavailable):
                call()
    finally:
        s.close()


def test_malformed_database_urls_are_config_errors() -> None:
    for url in ("sqlite://", "sqlite:///:memory:", "nosuchdb://x/y", "::::"):
        with pytest.raises(ConfigError, match="TOKENREQ_DATABASE_URL"):
            SqlKeyStore(url, [FERNET_1])


def test_relative_sqlite_paths_go_into_the_instance_folder(tmp_path: Path) -> None:
    s = SqlKeyStore("sqlite:///tokenreq.sqlite3", [FERNET_1], instance_path=str(tmp_path / "i"))
    s.create_tables()
    s.close()
    assert (tmp_path / "i" / "tokenreq.sqlite3").is_file()


# -- several processes on a fresh SQLite file --------------------------------------------


def _open_and_create(url: str, fernet_key: str, barrier: Any, results: Any) -> None:
    store = SqlKeyStore(url, [fernet_key])
    barrier.wait()
    store.create_tables()
    store.check()
    key, _ = store.create("from a process")
    results.put(key.key_name)
    store.close()


def test_several_processes_open_a_fresh_sqlite_file_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_open_and_create, args=(url, FERNET_1, barrier, results))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    names = {results.get(timeout=5) for _ in range(n)}
    store = SqlKeyStore(url, [FERNET_1])
    store.check()
    assert {i.key_name for i in store.list()} == names
    assert len(names) == n
    assert len(rows(store, models.meta)) == 1
    assert generation(store) == n
    with store.database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


@pytest.mark.postgres
def test_concurrent_create_tables_on_postgres(pg_schema: str) -> None:
    stores = [SqlKeyStore(pg_schema, [FERNET_1]) for _ in range(4)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def run(s: SqlKeyStore) -> None:
        try:
            barrier.wait()
            s.create_tables()
            s.check()
            s.create("k")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(stores[0].list()) == 4
    for s in stores:
        s.close()


# -- last used ---------------------------------------------------------------------------


def test_last_used_is_written_at_most_once_a_minute(store: SqlKeyStore, clock: FakeClock) -> None:
    key, _ = store.create("k")
    gen = generation(store)
    store.note_used(key.key_name)
    first = clock()
    clock.advance(30_000)
    store.note_used(key.key_name)
    info = store.describe(key.key_name)
    assert info is not None
    assert info.last_used_ms == first
    clock.advance(30_000)
    store.note_used(key.key_name)
    info = store.describe(key.key_name)
    assert info is not None
    assert info.last_used_ms == clock()
    assert generation(store) == gen  # not a key change
    assert audit_events(store) == ["key.created"]
