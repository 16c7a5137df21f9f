"""The audit log: who changed which key, which tokens were revoked, which exchanges happened.

Rows go into ``tokenreq_audit`` (see :mod:`flask_tokenreq.models`) with the
columns of DESIGN §7b: ``id, at, event, key_name, client_id, actor, code,
remote_addr, request_id, detail``. Three ways to write one:

- :meth:`AuditLog.write` inside a transaction the caller already has: the key
  store writes each key change and its audit row in one transaction, so a
  change that fails leaves no row and a row never describes a change that
  did not happen;
- :meth:`AuditLog.record`: in a transaction of its own, durable when it returns;
- :meth:`AuditLog.submit`: queued and written by a background thread in
  batches (one transaction per batch). For the exchange path (``token.issued``,
  ``token.refused``), where a durable write per request would cost more than
  the exchange itself. A crash can lose the events of the last moments;
  :meth:`AuditLog.flush` waits until the queue is written.

Every event is also sent as the blinker signal
:data:`flask_tokenreq.signals.audit_event` (for
:meth:`write`, once the transaction committed), so an app can forward events
elsewhere; it is sent even when writing rows is disabled
(``TOKENREQ_AUDIT=False``).

A row never holds a secret, a MAC, a token or a ticket. :func:`sanitize`
enforces it on every field: a value that looks like a ``tkr_`` secret, a JWT
(or another dotted token), or a base64 HMAC-SHA256, and any detail entry
named like a secret (``secret``, ``mac``, ``token``, ``ticket``, ...), is
replaced by ``"[redacted]"``; so is everything after the first ``:`` of a key
name (a full key sent as a key name), there and where the detail quotes it.
Values come partly from clients (a clientId of a refused exchange), so
redaction, not an error, is the rule; for the same reason every string is
made storable on every database (NUL and lone surrogates escaped).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import queue
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from . import models
from .clock import Clock, now_ms
from .db import Database, describe
from .signals import audit_event

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "EVENTS",
    "REDACTED",
    "AuditEvent",
    "AuditLog",
    "AuditTransaction",
    "audit_event",
    "sanitize",
]

logger = logging.getLogger("flask_tokenreq")


#: Days of audit rows kept by default (``TOKENREQ_AUDIT_RETENTION``).
DEFAULT_RETENTION_DAYS = 90
DAY_MS = 86_400_000

#: The events of DESIGN §7b.
EVENTS = frozenset(
    {
        "key.created",
        "key.rotated",
        "key.revoked",
        "key.reencrypted",
        "tokens.revoked",
        "token.issued",
        "token.refused",
        "ticket.issued",
        "ticket.exchanged",
        "ticket.refused",
    }
)
_EVENT_NAME = re.compile(r"[a-z][a-z_]*(\.[a-z][a-z_]*)+")
#: Names already checked (a set lookup instead of a regex per event).
_known_events: set[str] = set(EVENTS)

#: What a redacted value becomes.
REDACTED = "[redacted]"

# A tkr_ secret (or a long piece of one); a JWT or any other dotted token of
# base64url parts (itsdangerous tickets too, whose later parts may be short:
# an "eyJ" segment followed by a dot); a base64 HMAC-SHA256 (a MAC). A token
# id (jti: random base64url, no dots) never matches, even when "tkr_" or
# "eyJ" happens to be part of it.
_SECRET_LIKE = re.compile(
    r"(?<![A-Za-z0-9_-])tkr_[A-Za-z0-9_-]{8,}"
    r"|[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\."
    r"|(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}="
)
_SECRET_NAMES = frozenset(
    {"secret", "mac", "hmac", "token", "ticket", "password", "jwt", "authorization", "key"}
)
_SECRET_SUFFIXES = ("secret", "token", "ticket", "password", "_mac", "jwt")

#: Column sizes (longer values are cut, never a failed insert).
_LIMITS = {
    "key_name": models.KEY_NAME_LENGTH,
    "client_id": 255,
    "actor": 255,
    "remote_addr": 64,
    "request_id": 128,
}
#: Longest string kept in ``detail``; longest ``detail`` as JSON.
_DETAIL_STRING_MAX = 1000
_DETAIL_JSON_MAX = 8000


class _Cleaner:
    """Redacts secret-looking values and cuts long ones; remembers whether it redacted."""

    def __init__(self) -> None:
        self.redacted = False
        #: Full keys sent as a key name, as text may quote them, and what they become.
        self._keys: list[tuple[str, str]] = []

    def key_name(self, value: str, limit: int) -> str:
        """A key name with everything after its first ``:`` redacted (a real key name has
        no ``:``, a full key ``appId.keyId:secret`` does); later text quoting it too."""
        name, _, rest = value.partition(":")
        if rest and rest != REDACTED:  # an already redacted name is left as it is
            self.redacted = True
            # As sent, and as an error message's {key_name!r} quotes it.
            for full in dict.fromkeys((value, repr(value)[1:-1])):
                self._keys.append((full, f"{full.partition(':')[0]}:{REDACTED}"))
            value = f"{name}:{REDACTED}"
        return self.text(value, limit)

    def text(self, value: str, limit: int) -> str:
        for full, redacted in self._keys:
            value = value.replace(full, redacted)
        if _SECRET_LIKE.search(value):
            self.redacted = True
            return REDACTED
        return _make_storable(value)[:limit]

    def detail(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value, _DETAIL_STRING_MAX)
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if depth < 4 and isinstance(value, Mapping):
            out = {}
            for k, v in list(value.items())[:100]:
                name = _make_storable(str(k))[:100]
                if _secret_name(name):
                    self.redacted = True
                    out[name] = REDACTED
                else:
                    out[name] = self.detail(v, depth + 1)
            return out
        if depth < 4 and isinstance(value, (list, tuple)):
            return [self.detail(v, depth + 1) for v in value[:100]]
        # Anything else (an exception, an object) would be str()-ed: too risky.
        self.redacted = True
        return REDACTED


def _make_storable(text: str) -> str:
    """``text`` as every database can store it: NUL (refused by PostgreSQL) as ``\\x00``,
    a lone surrogate (not UTF-8) as ``\\ud800``. Clients choose some values, and a row
    that cannot be stored would take its whole batch with it."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _secret_name(name: str) -> bool:
    """Whether a detail entry's name says it holds a secret (``secret``, ``accessToken``, ...)."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def _clean(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of an audit event with secret-looking values redacted, long ones cut."""
    cleaner = _Cleaner()
    for name, limit in _LIMITS.items():  # key_name first: the others may quote it
        value = fields.get(name)
        if value is not None:
            clean = cleaner.key_name if name == "key_name" else cleaner.text
            fields[name] = clean(str(value), limit)
    detail = fields.get("detail")
    if detail is not None:
        detail = cleaner.detail(dict(detail))
        if len(json.dumps(detail, ensure_ascii=False)) > _DETAIL_JSON_MAX:
            detail = {"truncated": True}
        fields["detail"] = detail
    if cleaner.redacted:
        logger.warning("audit: redacted a secret-looking value in a %s event", event)
    return fields


def sanitize(event: AuditEvent) -> AuditEvent:
    """``event`` with every value that could be a secret redacted and long values cut."""
    fields = {name: getattr(event, name) for name in (*_LIMITS, "detail")}
    return replace(event, **_clean(event.event, fields))


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit event; :meth:`to_dict` has the column names of DESIGN §7b."""

    event: str
    at: int
    key_name: str | None = None
    client_id: str | None = None
    actor: str | None = None
    code: int | None = None
    remote_addr: str | None = None
    request_id: str | None = None
    detail: Mapping[str, Any] | None = field(default=None, compare=False)
    #: The row id, once read back from the table.
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "event": self.event,
            "key_name": self.key_name,
            "client_id": self.client_id,
            "actor": self.actor,
            "code": self.code,
            "remote_addr": self.remote_addr,
            "request_id": self.request_id,
            "detail": dict(self.detail) if self.detail is not None else None,
        }

    def _row(self) -> dict[str, Any]:
        row = self.to_dict()
        del row["id"]
        return row


class AuditTransaction:
    """A write transaction with audit rows in it (see :meth:`AuditLog.transaction`)."""

    def __init__(self, log: AuditLog, conn: sa.Connection) -> None:
        self.log = log
        self.conn = conn
        self.events: list[AuditEvent] = []

    def write(self, event: str, **fields: Any) -> AuditEvent:
        """Add an audit row to this transaction; its signal goes out after the commit."""
        ev = self.log.write(self.conn, event, **fields)
        self.events.append(ev)
        return ev

    def emit(self) -> None:
        """Send the signals of the rows written, in order (after the commit)."""
        for ev in self.events:
            self.log.emit(ev)


_SENTINEL = object()


class AuditLog:
    """Writes, reads and purges ``tokenreq_audit`` rows, and sends :data:`audit_event`.

    ``db`` is a :class:`~flask_tokenreq.db.Database` shared with the key store
    (so key changes and their rows share a transaction), a database URL or an
    engine. ``enabled=False`` (``TOKENREQ_AUDIT=False``) writes no rows but
    still sends the signals. ``retention_days`` (``TOKENREQ_AUDIT_RETENTION``)
    is what :meth:`purge` removes by default, and what the background writer
    purges at most once an hour; ``None`` keeps rows forever.
    """

    #: Most events the background writer puts in one transaction.
    BATCH = 500
    #: Most events waiting for the background writer; more are dropped (and counted).
    QUEUE_MAX = 50_000
    #: How long the background writer waits for more events before writing a batch (s).
    LINGER_S = 0.05
    #: How often the background writer purges old rows, in ms of the injected clock.
    PURGE_INTERVAL_MS = 3_600_000

    def __init__(
        self,
        db: Database | str | sa.Engine,
        *,
        now_ms: Clock = now_ms,
        enabled: bool = True,
        retention_days: float | None = DEFAULT_RETENTION_DAYS,
        sender: object | None = None,
        instance_path: str | None = None,
    ) -> None:
        self.db = (
            db
            if isinstance(db, Database)
            else Database(db, instance_path=instance_path, name="audit log")
        )
        self._now = now_ms
        self.enabled = enabled
        if retention_days is not None:
            _check_days(retention_days)
        self.retention_days = retention_days
        self._sender = sender
        #: Events the background writer could not write (database down) or had no room for.
        self.dropped = 0
        #: Whether the tables are known to exist (the writer creates them otherwise).
        self._tables = False
        self._next_purge_ms: int | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._queue: queue.Queue[Any] = queue.Queue(self.QUEUE_MAX)
        #: Set to end the background writer's linger early (flush, close).
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        _register(self)

    def __repr__(self) -> str:
        return f"AuditLog({self.db.url!r}, enabled={self.enabled})"

    def create_tables(self) -> None:
        """Create the tables of :data:`flask_tokenreq.models.metadata` if missing (idempotent).

        Database failures become :class:`~flask_tokenreq.errors.StoreUnavailable`.
        The background writer calls it itself before its first batch, so a
        database that was down at start gets its tables once it is back.
        """
        self.db.guard(lambda: self.db.create_all(models.metadata))
        self._tables = True

    # -- building events

    def event(self, event: str, **fields: Any) -> AuditEvent:
        """A sanitized :class:`AuditEvent` at the injected clock's time (``at=`` overrides)."""
        if event not in _known_events:
            if not isinstance(event, str) or not _EVENT_NAME.fullmatch(event) or len(event) > 64:
                raise ValueError(f"audit event names look like 'key.created', got {event!r}")
            _known_events.add(event)
        at = fields.pop("at", None)
        code = fields.get("code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise TypeError("code must be an int (an Ably error code)")
        return AuditEvent(event, self._now() if at is None else int(at), **_clean(event, fields))

    # -- writing

    def write(self, conn: sa.Connection, event: str | AuditEvent, **fields: Any) -> AuditEvent:
        """Insert one row inside the caller's transaction ``conn``; no signal (see
        :meth:`transaction`, or call :meth:`emit` after the commit)."""
        ev = event if isinstance(event, AuditEvent) else self.event(event, **fields)
        if isinstance(event, AuditEvent):
            ev = sanitize(ev)
        if self.enabled:
            conn.execute(models.audit.insert().values(ev._row()))
        return ev

    def emit(self, ev: AuditEvent) -> None:
        """Send :data:`audit_event` for ``ev``."""
        audit_event.send(self._signal_sender(), event=ev)

    @contextlib.contextmanager
    def transaction(self, *, emit: bool = True) -> Iterator[AuditTransaction]:
        """A write transaction for a change and its audit rows; signals after the commit.

        ``emit=False`` leaves the signals to the caller (:meth:`AuditTransaction.emit`),
        which can then send them once it has released what it holds around the
        transaction: a receiver may make a change of its own.
        Database failures become :class:`~flask_tokenreq.errors.StoreUnavailable`.
        """
        with self.db.write() as conn:
            tx = AuditTransaction(self, conn)
            yield tx
        if emit:
            tx.emit()

    def record(self, event: str, **fields: Any) -> AuditEvent:
        """Write one event in its own transaction (durable on return), then signal it."""
        ev = self.event(event, **fields)
        if self.enabled:

            def run() -> None:
                self._ensure_tables()
                with self.db.write() as conn:
                    self.write(conn, ev)

            self.db.guard(run)
        self.emit(ev)
        return ev

    def submit(self, event: str, **fields: Any) -> AuditEvent:
        """Queue one event for the background writer and signal it now (never blocks)."""
        ev = self.event(event, **fields)
        if self.enabled:
            self._ensure_writer()
            try:
                self._queue.put_nowait(ev)
            except queue.Full:
                with self._lock:
                    self.dropped += 1
        self.emit(ev)
        return ev

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event submitted so far is written (or dropped); ``False`` on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()  # after the put: the writer finds ``done`` once awake
        return done.wait(timeout)

    # -- reading and purging

    def query(
        self,
        *,
        since_ms: int | None = None,
        event: str | None = None,
        key_name: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events, newest first: at or after ``since_ms``, of ``event``, about ``key_name``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError("limit must be an integer from 1 to 10000")
        t = models.audit
        stmt = sa.select(t).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if since_ms is not None:
            stmt = stmt.where(t.c.at >= since_ms)
        if event is not None:
            stmt = stmt.where(t.c.event == event)
        if key_name is not None:
            stmt = stmt.where(t.c.key_name == key_name)

        def run() -> list[AuditEvent]:
            with self.db.read() as conn:
                rows = conn.execute(stmt).mappings().all()
            return [
                AuditEvent(
                    event=r["event"],
                    at=r["at"],
                    key_name=r["key_name"],
                    client_id=r["client_id"],
                    actor=r["actor"],
                    code=r["code"],
                    remote_addr=r["remote_addr"],
                    request_id=r["request_id"],
                    detail=r["detail"],
                    id=r["id"],
                )
                for r in rows
            ]

        return self.db.guard(run)

    def purge(self, older_than_days: float | None = None, *, batch: int = 10_000) -> int:
        """Delete rows older than ``older_than_days`` (default: ``retention_days``); the count.

        In batches of ``batch`` rows, each its own transaction, so a large purge
        does not hold SQLite's write lock for long.
        """
        days = self.retention_days if older_than_days is None else older_than_days
        if days is None:
            return 0
        _check_days(days)
        cutoff = self._now() - int(days * DAY_MS)
        t = models.audit
        stmt = sa.delete(t).where(
            t.c.id.in_(sa.select(t.c.id).where(t.c.at < cutoff).limit(batch).scalar_subquery())
        )

        def run() -> int:
            total = 0
            while True:
                with self.db.write() as conn:
                    n = conn.execute(stmt).rowcount
                total += n
                if n < batch:
                    return total

        return self.db.guard(run)

    # -- the background writer

    def _signal_sender(self) -> object:
        if self._sender is not None:
            return self._sender
        from flask import current_app, has_app_context

        if has_app_context():
            return current_app._get_current_object()  # type: ignore[attr-defined]
        return self

    def _ensure_writer(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's queue and thread are not ours
                self._after_fork()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tokenreq-audit-writer", daemon=True
                )
                self._thread.start()

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue = queue.Queue(self.QUEUE_MAX)
        self._wake = threading.Event()
        self._thread = None

    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            if isinstance(item, AuditEvent) and q.qsize() < self.BATCH:
                # Let a batch gather for LINGER_S, asleep: waiting on the queue
                # instead would wake this thread (a thread switch and a GIL
                # hand-off) for every event. A flush or close ends the wait.
                self._wake.wait(self.LINGER_S)
            self._wake.clear()
            batch: list[AuditEvent] = []
            waiters: list[threading.Event] = []
            stop = False
            while True:
                if item is _SENTINEL:
                    stop = True
                    break
                if isinstance(item, threading.Event):
                    waiters.append(item)
                elif isinstance(item, AuditEvent):
                    batch.append(item)
                if len(batch) >= self.BATCH:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write_batch(batch)
            for w in waiters:
                w.set()
            if stop:
                return

    def _ensure_tables(self) -> None:
        """Create the tables once per process before writing (the database may have been
        down, or new, at start); raises the driver's errors."""
        if not self._tables:
            self.db.create_all(models.metadata)
            self._tables = True

    def _write_batch(self, batch: list[AuditEvent]) -> None:
        """Write ``batch`` in one transaction; when the database refuses a row (a data
        error, not a failing database), write the rows one by one, so one bad row does
        not drop the others. Rows not written are counted in :attr:`dropped` and logged."""
        try:
            self._insert(batch)
        except Exception as exc:
            if len(batch) == 1 or not _row_error(exc):
                self._drop(len(batch), exc)
                return
            if not self._write_rows(batch):
                return
        self._maybe_purge()

    def _write_rows(self, batch: list[AuditEvent]) -> bool:
        """Write each row of ``batch`` in a transaction of its own; ``False`` (the rest
        dropped) once the database itself fails."""
        for i, ev in enumerate(batch):
            try:
                self._insert([ev])
            except Exception as exc:
                if not _row_error(exc):
                    self._drop(len(batch) - i, exc)
                    return False
                self._drop(1, exc)
        return True

    def _insert(self, batch: list[AuditEvent]) -> None:
        self._ensure_tables()
        with self.db.write() as conn:
            conn.execute(models.audit.insert(), [ev._row() for ev in batch])

    def _drop(self, count: int, exc: Exception) -> None:
        with self._lock:
            self.dropped += count
        logger.warning(
            "audit log %s: %d event(s) not written: %s", self.db.url, count, describe(exc)
        )

    def _maybe_purge(self) -> None:
        if self.retention_days is None:
            return
        now = self._now()
        if self._next_purge_ms is not None and now < self._next_purge_ms:
            return
        self._next_purge_ms = now + self.PURGE_INTERVAL_MS
        try:
            self.purge()
        except Exception as exc:
            logger.warning("audit log %s: purge failed: %s", self.db.url, describe(exc))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the background writer."""
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._queue.put(_SENTINEL)
            self._wake.set()
            thread.join(timeout)
        self._thread = None


def _row_error(exc: Exception) -> bool:
    """Whether ``exc`` is the database refusing a value (a data or integrity error, a
    string the driver cannot encode, a number out of range), not the database failing."""
    return isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError, ValueError, OverflowError))


def _check_days(days: object) -> None:
    if (
        isinstance(days, bool)
        or not isinstance(days, (int, float))
        or not math.isfinite(days)
        or days <= 0
    ):
        raise ValueError("the audit retention is a positive number of days")


# Write what is queued when the interpreter exits normally.
_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _register(log: AuditLog) -> None:
    _logs.add(log)


@atexit.register
def _close_all() -> None:  # pragma: no cover - runs at interpreter exit
    for log in list(_logs):
        with contextlib.suppress(Exception):
            log.close(timeout=2.0)
