"""Nonce stores against real backends: memory, SQLite files, PostgreSQL, Redis.

No fakes and no sleeps: expiry is driven by an injected clock, races are
lined up with barriers (threads) or a "go" line on stdin (processes).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_tokenreq.errors import ConfigError, StoreUnavailable
from flask_tokenreq.stores import (
    SETTING,
    NonceStore,
    default_nonce_store_url,
    open_nonce_store,
    redact_url,
)
from flask_tokenreq.stores.memory import MemoryNonceStore
from flask_tokenreq.stores.redis import RedisNonceStore
from flask_tokenreq.stores.sql import SqlNonceStore

from .conftest import ROOT, FakeClock, unavailable

WINDOW = 120_000  # ms, the provider's default timestamp window

BACKENDS = ["memory", "sqlite", "postgres", "redis"]
# The portable SQL path (insert; integrity error = used) runs the semantic tests too.
ALL_BACKENDS = [*BACKENDS, "sqlite-insert", "postgres-insert"]
SHARED_BACKENDS = ["sqlite", "postgres", "redis"]

StoreFactory = Callable[..., NonceStore]


# --------------------------------------------------------------------------
# Fixtures: one isolated place per test on each backend, cleaned up after


class Backend:
    """A backend for one test: its URL, a store factory, and a cleanup."""

    def __init__(self, name: str, url: str, key_name: str) -> None:
        self.name = name
        self.url = url
        self.key_name = key_name
        self.stores: list[NonceStore] = []

    def open(self, clock: Callable[[], int] | None = None, **kwargs: Any) -> NonceStore:
        now = clock or FakeClock()
        store: NonceStore
        if self.name.endswith("-insert"):
            store = SqlNonceStore(self.url, now_ms=now, upsert=False, **kwargs)
        elif kwargs:
            store = SqlNonceStore(self.url, now_ms=now, **kwargs)
        else:
            store = open_nonce_store(self.url, now_ms=now)
        self.stores.append(store)
        return store


def _pg_schema_url(base: str, schema: str, app_name: str | None = None) -> str:
    """``base`` with connections defaulting to ``schema`` (a fresh table per test).

    With a connect timeout longer than the package's 2 s: the race tests open
    up to 32 connections at once, and on a loaded 2-core machine PostgreSQL
    can take longer than that to start their backends. What they test is the
    claim's atomicity, not how fast a connection starts (a run under load
    failed here with ConnectionTimeout).
    """
    query = {"options": f"-csearch_path={schema}", "connect_timeout": "30"}
    if app_name:
        query["application_name"] = app_name
    return sa.make_url(base).update_query_dict(query).render_as_string(hide_password=False)


@contextlib.contextmanager
def pg_schema(postgres_url: str, unique: str) -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards."""
    schema = f"tokenreq_nonces_{unique}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def _redis_cleanup(url: str, key_name: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"tokenreq:nonce:{key_name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Backend]:
    name: str = request.param
    key_name = f"app{unique}.key"
    if name == "memory":
        b = Backend(name, "memory://", key_name)
        yield b
    elif name.startswith("sqlite"):
        b = Backend(name, f"sqlite:///{tmp_path / 'nonces.sqlite3'}", key_name)
        yield b
    elif name.startswith("postgres"):
        base = request.getfixturevalue("postgres_url")
        with pg_schema(base, unique) as schema:
            b = Backend(name, _pg_schema_url(base, schema), key_name)
            try:
                yield b
            finally:
                for store in b.stores:
                    store.close()
        return
    elif name == "redis":
        url = request.getfixturevalue("redis_url")
        b = Backend(name, url, key_name)
        try:
            yield b
        finally:
            _redis_cleanup(url, key_name)
    else:  # pragma: no cover
        raise AssertionError(name)
    for store in b.stores:
        store.close()


def backends(names: list[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("backend", names, indirect=True)


# --------------------------------------------------------------------------
# Claim semantics


@backends(ALL_BACKENDS)
def test_claim_once_then_refused(backend: Backend, clock: FakeClock) -> None:
    store = backend.open(clock)
    kn = backend.key_name
    exp = clock() + WINDOW
    assert store.claim(kn, "nonce-aaaaaaaaaaaaaaaa", exp) is True
    assert store.claim(kn, "nonce-aaaaaaaaaaaaaaaa", exp) is False
    assert store.claim(kn, "nonce-aaaaaaaaaaaaaaaa", exp + WINDOW) is False
    # Independent: another nonce, another key name.
    assert store.claim(kn, "nonce-bbbbbbbbbbbbbbbb", exp) is True
    assert store.claim(kn + "2", "nonce-aaaaaaaaaaaaaaaa", exp) is True
    assert store.claim(kn + "2", "nonce-aaaaaaaaaaaaaaaa", exp) is False


@backends(ALL_BACKENDS)
def test_fields_are_not_confused(backend: Backend, clock: FakeClock) -> None:
    """Separators inside key names or nonces cannot make two pairs collide."""
    store = backend.open(clock)
    kn = backend.key_name
    exp = clock() + WINDOW
    pairs = [(f"{kn}:a", "b:c"), (f"{kn}:a:b", "c"), (kn, "a:b:c"), (f"{kn}:a", "b\x00c")]
    assert [store.claim(k, n, exp) for k, n in pairs] == [True] * len(pairs)
    assert [store.claim(k, n, exp) for k, n in pairs] == [False] * len(pairs)


@backends(ALL_BACKENDS)
def test_expiry_follows_the_injected_clock(backend: Backend, clock: FakeClock) -> None:
    store = backend.open(clock)
    kn = backend.key_name
    exp = clock() + 10_000
    assert store.claim(kn, "nonce-expiring-0001", exp)
    clock.ms = exp - 1
    assert store.claim(kn, "nonce-expiring-0001", exp) is False  # one ms before
    clock.ms = exp
    assert store.claim(kn, "nonce-expiring-0001", exp) is False  # live through expires_at
    clock.ms = exp + 1
    assert store.claim(kn, "nonce-expiring-0001", clock() + 10_000) is True  # expired
    assert store.claim(kn, "nonce-expiring-0001", clock() + 10_000) is False  # claimed anew
    clock.advance(5_000)
    assert store.claim(kn, "nonce-expiring-0001", clock() + 10_000) is False


@backends(ALL_BACKENDS)
def test_expiry_in_the_past_still_blocks_the_same_millisecond(
    backend: Backend, clock: FakeClock
) -> None:
    store = backend.open(clock)
    kn = backend.key_name
    assert store.claim(kn, "nonce-in-the-past-01", clock() - 5_000) is True
    assert store.claim(kn, "nonce-in-the-past-01", clock() - 5_000) is False
    clock.advance(1)
    assert store.claim(kn, "nonce-in-the-past-01", clock() + WINDOW) is True


@backends(BACKENDS)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.lists(
        st.tuples(
            st.text(
                st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                min_size=1,
                max_size=20,
            ),
            st.text(min_size=1, max_size=40),  # nonces: anything, lone surrogates too
        ),
        min_size=1,
        max_size=6,
        unique=True,
    )
)
def test_any_characters(backend: Backend, clock: FakeClock, pairs: list[tuple[str, str]]) -> None:
    store = backend.open(clock)
    clock.advance(10 * WINDOW)  # a fresh time for every example: earlier claims expired
    exp = clock() + WINDOW
    pairs = [(backend.key_name + k, n) for k, n in pairs]
    assert [store.claim(k, n, exp) for k, n in pairs] == [True] * len(pairs)
    assert [store.claim(k, n, exp) for k, n in pairs] == [False] * len(pairs)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((b"app.key", "n" * 16, 1), TypeError),
        ((None, "n" * 16, 1), TypeError),
        ((1, "n" * 16, 1), TypeError),
        (("app.key", b"n" * 16, 1), TypeError),
        (("app.key", None, 1), TypeError),
        (("app.key", "n" * 16, True), TypeError),
        (("app.key", "n" * 16, 1.5), TypeError),
        (("app.key", "n" * 16, "1"), TypeError),
        (("app.key", "n" * 16, None), TypeError),
        (("", "n" * 16, 1), ValueError),
        (("app.key", "", 1), ValueError),
        (("a" * 256, "n" * 16, 1), ValueError),
        (("app\x00key", "n" * 16, 1), ValueError),
        (("app\ud800key", "n" * 16, 1), ValueError),
    ],
)
@backends(BACKENDS)
def test_bad_arguments_rejected(backend: Backend, args: tuple[Any, ...], error: type) -> None:
    store = backend.open()
    with pytest.raises(error):
        store.claim(*args)


# --------------------------------------------------------------------------
# Races


def _race(n: int, fn: Callable[[], bool]) -> list[bool]:
    """Run ``fn`` in ``n`` threads released together; their results."""
    barrier = threading.Barrier(n)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            result = fn()
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(results) == n
    return results


@backends(ALL_BACKENDS)
def test_32_threads_one_winner(backend: Backend, clock: FakeClock) -> None:
    store = backend.open(clock)
    kn = backend.key_name
    exp = clock() + WINDOW
    for round_ in range(3):
        nonce = f"nonce-thread-race-{round_:04d}"
        results = _race(32, lambda nonce=nonce: store.claim(kn, nonce, exp))  # type: ignore[misc]
        assert results.count(True) == 1, results


@backends(ALL_BACKENDS)
def test_32_threads_one_winner_over_an_expired_claim(backend: Backend, clock: FakeClock) -> None:
    """The expired-row path (upsert / delete-then-insert / WATCH) is atomic too."""
    store = backend.open(clock)
    kn = backend.key_name
    for round_ in range(3):
        nonce = f"nonce-expired-race-{round_:04d}"
        assert store.claim(kn, nonce, clock() + 1_000)
        clock.advance(1_001)
        exp = clock() + WINDOW
        results = _race(32, lambda nonce=nonce, exp=exp: store.claim(kn, nonce, exp))  # type: ignore[misc]
        assert results.count(True) == 1, results


def test_sqlite_claims_from_32_threads_while_purging(tmp_path: Path, clock: FakeClock) -> None:
    """Claims and purges share the SQLite host lock and the connection pool
    (15 connections): with a purge after every claim and 32 threads, none
    waits for the other forever (a lock-order inversion ended in the pool's
    timeout)."""
    store = SqlNonceStore(
        f"sqlite:///{tmp_path / 'purging.sqlite3'}", now_ms=clock, purge_interval_ms=0
    )
    for i in range(50):
        assert store.claim("app.key", f"nonce-expired-{i:04d}", clock() - 1)
    clock.advance(1)
    for round_ in range(3):
        counter = itertools.count()
        results = _race(
            32,
            lambda r=round_, c=counter: store.claim(  # type: ignore[misc]
                "app.key", f"nonce-purging-{r}-{next(c):04d}", clock() + WINDOW
            ),
        )
        assert results == [True] * 32
    assert store.count() == 3 * 32  # the expired rows were purged meanwhile
    store.close()


WORKER = r"""
import json, sys
from flask_tokenreq.stores import open_nonce_store
url, key_name, count, now, reverse = sys.argv[1:6]
count, now = int(count), int(now)
store = open_nonce_store(url, now_ms=lambda: now)
print("ready", flush=True)
sys.stdin.readline()
order = range(count - 1, -1, -1) if reverse == "1" else range(count)
won = [i for i in order if store.claim(key_name, "nonce-process-%06d" % i, now + 60000)]
store.close()
print(json.dumps(won), flush=True)
"""


def _run_processes(url: str, key_name: str, processes: int, count: int) -> list[list[int]]:
    """Start ``processes`` workers, release them together; each one's won nonces."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    now = FakeClock()()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, key_name, str(count), str(now), str(i % 2)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for i in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                _, err = p.communicate(timeout=30)
                raise AssertionError(f"worker failed to start: {line!r} {err}")
        for p in procs:  # every worker has opened its store: release them
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@backends(SHARED_BACKENDS)
def test_processes_claim_each_nonce_exactly_once(backend: Backend) -> None:
    """4 processes race over the same 150 nonces (the SQLite file and PostgreSQL
    table do not exist yet: the processes also race to create them)."""
    count = 150
    results = _run_processes(backend.url, backend.key_name, processes=4, count=count)
    won = sorted(i for r in results for i in r)
    # Every process claimed every nonce (a failed claim would exit non-zero) and
    # each nonce was won exactly once. How the wins split between processes is up
    # to the scheduler (one fast process may win them all), so it is not asserted.
    assert won == list(range(count))


def _cold_start(url: str, barrier: Any, results: Any, now: int) -> None:
    """One worker's boot: open the store when the others do, then claim at once."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logging.getLogger("flask_tokenreq").addHandler(Collect(logging.WARNING))
    try:
        barrier.wait(timeout=60)
        store = open_nonce_store(url, now_ms=lambda: now)
        claimed = store.claim("app.key", "nonce-cold-start-01", now + WINDOW)
        store.close()
        results.put(("claimed" if claimed else "refused", records))
    except BaseException as exc:
        results.put((f"{type(exc).__name__}: {exc}", records))


def test_sqlite_cold_starts_of_4_processes(tmp_path: Path) -> None:
    """50 cold starts: 4 processes open a store on a fresh SQLite file at the same
    instant (a barrier), as gunicorn workers boot, and claim one nonce at once.

    Every open and every first claim works, without a warning, and exactly one
    process wins. (SQLite answers the switch to WAL mode on a fresh file with
    "database is locked" at once when another connection is switching too.)
    """
    ctx = multiprocessing.get_context("fork")
    now = FakeClock()()
    failures = []
    for round_ in range(50):
        url = f"sqlite:///{tmp_path / f'cold-{round_:02d}.sqlite3'}"
        barrier = ctx.Barrier(4)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_cold_start, args=(url, barrier, results, now)) for _ in range(4)
        ]
        for p in procs:
            p.start()
        outcomes = sorted(
            (outcome, tuple(logs)) for outcome, logs in (results.get(timeout=120) for _ in procs)
        )
        for p in procs:
            p.join(timeout=60)
        exits = [p.exitcode for p in procs]
        if outcomes != [("claimed", ())] + [("refused", ())] * 3 or exits != [0] * 4:
            failures.append((round_, outcomes, exits))
    assert failures == []


def test_memory_store_is_per_process(unique: str) -> None:
    """Two processes each have their own memory:// set: both accept the same nonce.

    This is why memory:// is for one process only (and warns)."""
    results = _run_processes("memory://", f"app{unique}.key", processes=2, count=3)
    assert results[0] == [0, 1, 2]
    assert sorted(results[1]) == [0, 1, 2]


# --------------------------------------------------------------------------
# Expired entries are purged: live state is bounded by rate x window


def _claim_steadily(
    store: NonceStore, kn: str, clock: FakeClock, measure: Callable[[], int]
) -> int:
    """60 s of 10 claims a second, each live 10 s; the largest live count seen."""
    peak = 0
    for second in range(60):
        for i in range(10):
            assert store.claim(kn, f"nonce-steady-{second:03d}-{i:02d}", clock() + 10_000)
        peak = max(peak, measure())
        clock.advance(1_000)
    return peak


def test_memory_purges_expired(clock: FakeClock, unique: str) -> None:
    store = MemoryNonceStore(now_ms=clock, warn=False)
    peak = _claim_steadily(store, f"app{unique}.key", clock, lambda: len(store))
    # 10/s x 10 s live, plus the second in progress: far below the 600 claimed.
    assert peak <= 10 * 11 + 10
    clock.advance(3_600_000)
    store.claim(f"app{unique}.key", "nonce-after-idle-01", clock() + 10_000)
    assert len(store) == 1


@backends(["sqlite", "postgres", "sqlite-insert"])
def test_sql_purges_expired_rows(backend: Backend, clock: FakeClock) -> None:
    store = backend.open(clock, purge_interval_ms=5_000)
    assert isinstance(store, SqlNonceStore)
    peak = _claim_steadily(store, backend.key_name, clock, store.count)
    # Rows live 10 s; purges run every 5 s: at most about 16 s of claims.
    assert peak <= 10 * 16 + 10, peak
    clock.advance(3_600_000)  # after a long idle, the next claim purges the backlog
    store.claim(backend.key_name, "nonce-after-idle-01", clock() + 10_000)
    assert store.count() == 1


def test_sql_purge_cost_is_bounded(tmp_path: Path, clock: FakeClock) -> None:
    """A backlog drains one bounded batch per claim, not all at once."""
    store = SqlNonceStore(f"sqlite:///{tmp_path / 'n.db'}", now_ms=clock, purge_batch=10)
    for i in range(45):
        assert store.claim("app.key", f"nonce-backlog-{i:04d}", clock() + 1_000)
        clock.advance(1)  # distinct expiries (a batch also takes rows tied with its last)
    clock.advance(10_000)  # all expired, and the purge interval (5 s) has passed
    counts = [store.count()]
    for i in range(6):
        store.claim("app.key", f"nonce-draining-{i:04d}", clock() + 1_000)
        counts.append(store.count())
    # Each claim adds 1 row and deletes at most 10 expired ones.
    drops = [a - b for a, b in itertools.pairwise(counts)]
    assert all(d <= 9 for d in drops), counts
    assert counts[-1] == 6, counts  # drained: only the 6 new claims remain
    store.close()


@backends(ALL_BACKENDS)
def test_purge_deletes_every_expired_claim(backend: Backend, clock: FakeClock) -> None:
    """``purge()`` (for ``flask tokenreq nonces purge``) deletes every expired claim
    and nothing live; SQL stores work through the backlog in batches."""
    kwargs: dict[str, Any] = {}
    if backend.name.startswith(("sqlite", "postgres")):
        kwargs = {"purge_batch": 7, "purge_interval_ms": 10**9}  # no purge while claiming
    store = backend.open(clock, **kwargs)
    kn = backend.key_name
    start = clock()
    for i in range(30):
        assert store.claim(kn, f"nonce-purge-short-{i:04d}", start + 1_000 + i)
    for i in range(5):
        assert store.claim(kn, f"nonce-purge-long-{i:04d}", start + 60_000)

    def held() -> int:
        if isinstance(store, MemoryNonceStore):
            return len(store)
        assert isinstance(store, SqlNonceStore)
        return store.count()

    clock.ms = start + 1_000  # every claim is live (through its expires_at)
    assert store.purge() == 0
    clock.ms = start + 1_015  # offsets 0..14 expired, 15..29 live
    if backend.name == "redis":
        assert store.purge() == 0  # Redis expires keys by itself
    else:
        assert store.purge() == 15  # 7 + 7 + 1 in batches on SQL
        assert held() == 15 + 5
        assert store.purge() == 0
    # Nothing live was deleted: those nonces are still refused.
    assert store.claim(kn, "nonce-purge-short-0015", start + 60_000) is False
    assert store.claim(kn, "nonce-purge-long-0000", start + 60_000) is False
    assert store.claim(kn, "nonce-purge-short-0000", start + 60_000) is True  # expired
    if backend.name != "redis":
        assert store.purge(now=start + 60_001) == 15 + 5 + 1  # an explicit time
        assert held() == 0


def _redis_keys(url: str, key_name: str) -> dict[bytes, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return {k: client.pttl(k) for k in client.scan_iter(match=f"tokenreq:nonce:{key_name}:*")}
    finally:
        client.close()


@pytest.mark.parametrize("start", [978_307_200_000, 1_700_000_000_000, 7_258_118_400_000])
def test_redis_ttl_is_relative_to_the_injected_clock(
    redis_url: str, unique: str, start: int
) -> None:
    """Redis expires keys by its own clock. The TTL sent is ``expires_at - now``
    on the injected clock, so a clock far in the past (2001) or future (2200)
    still gives each key a TTL of the claim's length: not 0 (replays) and not
    centuries (unbounded growth)."""
    kn = f"app{unique}.key"
    clock = FakeClock(start)
    store = open_nonce_store(redis_url, now_ms=clock)
    try:
        for i in range(20):
            assert store.claim(kn, f"nonce-ttl-{i:04d}", clock() + WINDOW)
            assert store.claim(kn, f"nonce-ttl-{i:04d}", clock() + WINDOW) is False
        keys = _redis_keys(redis_url, kn)
        assert len(keys) == 20
        assert all(0 < ttl <= WINDOW + 1 for ttl in keys.values()), keys
        assert min(keys.values()) > WINDOW - 30_000  # not shortened
    finally:
        store.close()
        _redis_cleanup(redis_url, kn)


def test_redis_claim_is_judged_on_the_injected_clock_not_the_servers(
    redis_url: str, unique: str, clock: FakeClock
) -> None:
    """Redis expires keys on its own clock. A claim whose expiry is already past
    stays live for the rest of its millisecond on the injected clock, however
    far the server's clock moves meanwhile (a 1 ms TTL made this race: issue 8).

    The server's clock is not injectable, so the test waits for it to move on
    by a few milliseconds, reading it with ``TIME`` (no sleep)."""
    import redis

    kn = f"app{unique}.key"
    store = open_nonce_store(redis_url, now_ms=clock)
    client = redis.Redis.from_url(redis_url)

    def server_ms() -> int:
        seconds, micros = client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    try:
        assert store.claim(kn, "nonce-server-clock-01", clock() - 5_000) is True
        start = server_ms()
        while server_ms() < start + 3:
            pass
        assert store.claim(kn, "nonce-server-clock-01", clock() - 5_000) is False
        assert store.claim(kn, "nonce-server-clock-01", clock() + WINDOW) is False
        clock.advance(1)
        assert store.claim(kn, "nonce-server-clock-01", clock() + WINDOW) is True
        assert store.claim(kn, "nonce-server-clock-01", clock() + WINDOW) is False
    finally:
        client.close()
        store.close()
        _redis_cleanup(redis_url, kn)


def test_redis_reclaim_after_expiry_replaces_the_key(redis_url: str, unique: str) -> None:
    """Claims over many windows keep one key per nonce, each with a fresh TTL."""
    kn = f"app{unique}.key"
    clock = FakeClock()
    store = open_nonce_store(redis_url, now_ms=clock)
    try:
        for _ in range(10):
            for i in range(5):
                assert store.claim(kn, f"nonce-reclaim-{i:04d}", clock() + 10_000)
            clock.advance(10_001)
        keys = _redis_keys(redis_url, kn)
        assert len(keys) == 5
        assert all(0 < ttl <= 10_001 for ttl in keys.values()), keys
    finally:
        store.close()
        _redis_cleanup(redis_url, kn)


# --------------------------------------------------------------------------
# Store down: fail closed, and recover without reopening


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server (no persistence) that can be stopped and started."""

    def __init__(self, *args: str) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            unavailable("redis-server is not installed")
        self.binary = binary
        self.args = args
        self.port = _free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", *self.args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        lines = []
        for line in self.proc.stdout:  # blocks until the server says it is ready
            lines.append(line)
            if "Ready to accept connections" in line:
                # Keep draining its log so the server never blocks on a full pipe.
                self.drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
                self.drain.start()
                return
        self.stop()
        raise AssertionError("redis-server did not start:\n" + "".join(lines))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        if self.drain is not None:
            self.drain.join(timeout=30)
            self.drain = None
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(*args)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test",
        "postgres://postgres:hunter2@127.0.0.1:1/test",
        "redis://:hunter2@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=hunter2",
        # libpq takes the password (and the client key's) from the query too.
        "postgresql://postgres@127.0.0.1:1/test?password=hunter2",
        "postgresql://postgres@127.0.0.1:1/test?sslpassword=hunter2&sslmode=prefer",
    ],
)
def test_unreachable_store_fails_closed(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flask_tokenreq")
    store = open_nonce_store(url)  # opening a store that is down is not an error
    with pytest.raises(StoreUnavailable) as info:
        store.claim("app.key", "nonce-store-down-01", FakeClock()() + WINDOW)
    assert info.value.code == 50003
    assert info.value.status == 503
    message = str(info.value)
    assert ("redis" in message) or ("postgresql" in message)
    assert "127.0.0.1:1" in message
    with pytest.raises(StoreUnavailable):
        store.ping()
    assert "hunter2" not in message + caplog.text
    store.close()


def test_sqlite_unusable_file_fails_closed_then_recovers(tmp_path: Path, clock: FakeClock) -> None:
    """A missing folder (works as root too): 503; once it exists, claims work."""
    folder = tmp_path / "not-yet"
    store = open_nonce_store(f"sqlite:///{folder / 'n.db'}", now_ms=clock)
    with pytest.raises(StoreUnavailable, match="sqlite"):
        store.claim("app.key", "nonce-sqlite-down-01", clock() + WINDOW)
    with pytest.raises(StoreUnavailable):
        store.ping()
    folder.mkdir()
    store.ping()
    assert store.claim("app.key", "nonce-sqlite-down-01", clock() + WINDOW) is True
    assert store.claim("app.key", "nonce-sqlite-down-01", clock() + WINDOW) is False
    store.close()


def test_sqlite_corrupt_file_fails_closed(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database file at all" * 200)
    store = open_nonce_store(f"sqlite:///{path}", now_ms=clock)
    with pytest.raises(StoreUnavailable):
        store.claim("app.key", "nonce-sqlite-garbage", clock() + WINDOW)
    store.close()


def test_redis_down_then_back_again(
    redis_server: Callable[..., RedisServer], clock: FakeClock
) -> None:
    server = redis_server()
    store = open_nonce_store(server.url, now_ms=clock)
    exp = clock() + WINDOW
    assert store.claim("app.key", "nonce-before-crash", exp) is True
    server.stop()
    with pytest.raises(StoreUnavailable):
        store.claim("app.key", "nonce-during-crash", exp)
    with pytest.raises(StoreUnavailable):
        store.ping()
    server.start()  # same port, empty (no persistence)
    assert store.claim("app.key", "nonce-after-crash", exp) is True
    assert store.claim("app.key", "nonce-after-crash", exp) is False
    store.ping()
    store.close()


def test_redis_hung_server_times_out(
    redis_server: Callable[..., RedisServer], clock: FakeClock
) -> None:
    """A server that accepts but never answers: the 2 s socket timeout gives 503."""
    server = redis_server()
    assert server.proc is not None
    store = open_nonce_store(server.url, now_ms=clock)
    exp = clock() + WINDOW
    assert store.claim("app.key", "nonce-before-hang", exp) is True
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            store.claim("app.key", "nonce-during-hang", exp)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert store.claim("app.key", "nonce-after-hang", exp) is True
    store.close()


def test_postgres_connections_killed_then_claims_work(
    postgres_url: str, unique: str, clock: FakeClock
) -> None:
    """The server drops every connection of the store: the next claim reconnects."""
    app_name = f"tokenreq_test_{unique}"
    with pg_schema(postgres_url, unique) as schema:
        url = _pg_schema_url(postgres_url, schema, app_name)
        store = open_nonce_store(url, now_ms=clock)
        exp = clock() + WINDOW
        assert store.claim("app.key", "nonce-before-kill", exp)
        admin = sa.create_engine(postgres_url)
        with admin.begin() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": app_name},
            ).scalar()
        admin.dispose()
        assert (killed or 0) >= 1
        assert store.claim("app.key", "nonce-after-kill", exp) is True
        assert store.claim("app.key", "nonce-before-kill", exp) is False
        store.close()


# --------------------------------------------------------------------------
# Redis start-up checks


def test_redis_warns_when_eviction_is_possible(
    redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server("--maxmemory-policy", "allkeys-lru")
    caplog.set_level(logging.INFO, logger="flask_tokenreq")
    open_nonce_store(server.url).close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("allkeys-lru" in r.getMessage() and "noeviction" in r.getMessage() for r in warnings)


def test_redis_noeviction_is_quiet_and_config_may_be_disabled(
    redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    caplog.set_level(logging.INFO, logger="flask_tokenreq")
    quiet = redis_server("--maxmemory-policy", "noeviction")
    open_nonce_store(quiet.url).close()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]

    no_config = redis_server("--rename-command", "CONFIG", "")
    store = open_nonce_store(no_config.url, now_ms=clock)  # CONFIG refused: not fatal
    assert store.claim("app.key", "nonce-no-config-01", clock() + WINDOW)
    assert any("maxmemory-policy" in r.getMessage() for r in caplog.records)
    store.close()


def test_redis_checks_the_policy_once_it_is_reachable(
    redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """Redis down at start-up: the eviction check runs after the first good claim."""
    caplog.set_level(logging.INFO, logger="flask_tokenreq")
    server = RedisServer("--maxmemory-policy", "volatile-ttl")
    store = open_nonce_store(server.url, now_ms=clock)
    assert "volatile-ttl" not in caplog.text
    server.start()
    try:
        assert store.claim("app.key", "nonce-late-redis-01", clock() + WINDOW)
        assert "volatile-ttl" in caplog.text
    finally:
        store.close()
        server.stop()


# --------------------------------------------------------------------------
# URLs and configuration


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "foo://bar", "not a url", "", "   ", "sqlite://", "sqlite:///:memory:"],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=SETTING):
        open_nonce_store(url)


def test_non_string_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=SETTING):
        open_nonce_store(None)  # type: ignore[arg-type]


def test_memory_store_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_tokenreq")
    store = open_nonce_store("memory://")
    assert isinstance(store, MemoryNonceStore)
    assert "memory://" in caplog.text
    assert "process" in caplog.text


def test_postgres_url_spellings_use_psycopg3(postgres_url: str) -> None:
    plain = sa.make_url(postgres_url).set(drivername="postgresql")
    for drivername in ("postgresql", "postgres"):
        url = plain.set(drivername=drivername).render_as_string(hide_password=False)
        store = open_nonce_store(url)
        assert isinstance(store, SqlNonceStore)
        assert store.url.startswith("postgresql+psycopg://")
        store.ping()
        store.close()


def test_redis_url_schemes(redis_url: str) -> None:
    store = open_nonce_store(redis_url)
    assert isinstance(store, RedisNonceStore)
    store.close()
    assert isinstance(open_nonce_store("rediss://127.0.0.1:1/0"), RedisNonceStore)
    assert isinstance(open_nonce_store("unix:///nonexistent/redis.sock"), RedisNonceStore)


def test_relative_sqlite_path_goes_to_the_instance_folder(tmp_path: Path, clock: FakeClock) -> None:
    instance = tmp_path / "instance"
    store = open_nonce_store("sqlite:///sub/nonces.db", now_ms=clock, instance_path=str(instance))
    assert store.claim("app.key", "nonce-relative-path", clock() + WINDOW)
    assert (instance / "sub" / "nonces.db").is_file()
    store.close()


def test_default_url_is_sqlite_in_the_instance_folder(tmp_path: Path, clock: FakeClock) -> None:
    instance = tmp_path / "my instance%dir"  # created; odd characters survive the URL
    url = default_nonce_store_url(str(instance))
    assert url.startswith("sqlite:///")
    assert url.endswith("/tokenreq-nonces.sqlite3")
    assert instance.is_dir()
    store = open_nonce_store(url, now_ms=clock)
    assert store.claim("app.key", "nonce-default-url-1", clock() + WINDOW)
    assert (instance / "tokenreq-nonces.sqlite3").is_file()
    store.close()
    # WAL mode is a property of the file: every worker's connection shares it.
    with contextlib.closing(sqlite3.connect(instance / "tokenreq-nonces.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


def test_importing_the_stores_loads_no_driver(tmp_path: Path) -> None:
    """SQLAlchemy, redis-py and psycopg are imported when a store needs them, not before."""
    code = f"""
import sys
DRIVERS = ("sqlalchemy", "redis", "psycopg")
def loaded():
    return sorted({{m.split(".")[0] for m in sys.modules}} & set(DRIVERS))
import flask_tokenreq, flask_tokenreq.stores
from flask_tokenreq.stores import open_nonce_store, NonceStore, default_nonce_store_url
print(loaded())
open_nonce_store("memory://").close()
print(loaded())
open_nonce_store("sqlite:///{tmp_path / "lazy.sqlite3"}").close()
print(loaded())
open_nonce_store("redis://127.0.0.1:1/0").close()
print(loaded())
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[]",
        "[]",
        "['sqlalchemy']",
        "['redis', 'sqlalchemy']",
    ]


def test_missing_redis_driver_is_a_config_error() -> None:
    code = """
import sys
sys.modules["redis"] = None  # as if redis-py were not installed
from flask_tokenreq.errors import ConfigError
from flask_tokenreq.stores import open_nonce_store
try:
    open_nonce_store("redis://127.0.0.1:6379/0")
except ConfigError as exc:
    print(exc)
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert "TOKENREQ_NONCE_STORE" in result.stdout
    assert "pip install 'flask-tokenreq[redis]'" in result.stdout


def test_scheme_table_and_sqlalchemy_fallback(tmp_path: Path) -> None:
    """Schemes are looked up without their ``+driver``; others go to SQLAlchemy."""
    from flask_tokenreq.stores import SCHEMES

    assert {"memory", "redis", "rediss", "unix", "sqlite", "postgresql", "postgres"} <= set(SCHEMES)
    store = open_nonce_store(f"sqlite+pysqlite:///{tmp_path / 'driver.sqlite3'}")
    assert isinstance(store, SqlNonceStore)
    store.close()
    with pytest.raises(ConfigError, match="unsupported URL scheme"):
        open_nonce_store("nosuchdb://host/db")


def test_old_module_name_still_works_with_a_deprecation_warning() -> None:
    code = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from flask_tokenreq.nonces import open_nonce_store, SqlNonceStore, REDIS_KEY_PREFIX
import flask_tokenreq.stores as stores
import flask_tokenreq.stores.sql as sql
assert open_nonce_store is stores.open_nonce_store
assert SqlNonceStore is sql.SqlNonceStore
print(REDIS_KEY_PREFIX)
print([str(w.message) for w in caught if w.category is DeprecationWarning])
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "tokenreq:nonce:"
    assert "flask_tokenreq.stores" in lines[1]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw@host/0", "redis://user:***@host/0"),
        ("postgresql://u:p%40ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("postgresql://u@h/db?sslpassword=pw", "postgresql://u@h/db?sslpassword=***"),
        ("postgresql://u@h/db?Client_Secret=pw", "postgresql://u@h/db?Client_Secret=***"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("memory://", "memory://"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    stores = [
        MemoryNonceStore(warn=False),
        open_nonce_store(f"sqlite:///{tmp_path / 'p.db'}"),
        open_nonce_store("redis://127.0.0.1:1/0"),
    ]
    for store in stores:
        assert isinstance(store, NonceStore)
        store.close()
        store.close()  # idempotent
