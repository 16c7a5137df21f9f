"""Managed keys in SQL: create, rotate with grace, revoke, revoke tokens, re-encrypt.

:class:`SqlKeyStore` is a :class:`~flask_tokenreq.keys.KeyStore` whose keys
live in the tables of :mod:`flask_tokenreq.models` (``TOKENREQ_DATABASE_URL``).
Secrets are stored Fernet-encrypted under ``TOKENREQ_KEY_ENCRYPTION_KEYS``
(:class:`cryptography.fernet.MultiFernet`, newest key first) and returned in
plain text exactly once, by :meth:`SqlKeyStore.create` and
:meth:`SqlKeyStore.rotate`.

"At once" is the rule: every change is one transaction that also bumps the
``tokenreq_generation`` counter and writes its audit row, so from the moment
a call returns every process sharing the database sees it. :meth:`get`
(exchanges, key auth) reads the key and its secrets on every call.
:meth:`state` and :meth:`token_revoked` (the token-guard path) keep what is
not secret in memory and revalidate it with one primary-key read of the
counter per call, so nothing a change made stale is ever used.

Every database failure is :class:`~flask_tokenreq.errors.StoreUnavailable`
(503, 50003): fail closed. A stored secret that the configured encryption
keys cannot decrypt is a :class:`~flask_tokenreq.errors.ConfigError` at
:meth:`check` (call it at start) and a logged 503 at run time, never a 500.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .. import models
from ..audit import DEFAULT_RETENTION_DAYS, AuditLog, AuditTransaction
from ..capability import Capability
from ..clock import Clock, now_ms
from ..db import Database, describe
from ..errors import (
    ConfigError,
    Conflict,
    InvalidParameter,
    NotFound,
    StoreUnavailable,
)
from ..settings import fernet_keys
from . import changes
from .base import (
    MAX_EXPIRES_MS,
    ApiKey,
    GraceSecret,
    KeyStatus,
    ListStatus,
    check_list_status,
    expired,
    has_passed,
)
from .changes import ChangeCounter
from .secret import (
    hint,
    new_key_id,
    new_secret,
    valid_app_id,
)

__all__ = [
    "ENCRYPTION_SETTING",
    "KeyInfo",
    "KeyState",
    "SqlKeyStore",
    "target_error",
]

logger = logging.getLogger("flask_tokenreq")

#: The setting holding the Fernet keys; named in errors (never its value).
ENCRYPTION_SETTING = "TOKENREQ_KEY_ENCRYPTION_KEYS"
#: The app id of new keys unless another is given.
DEFAULT_APP_ID = "tokenreq"
#: Ably's ``allowReauthMargin``: the revocation applies this much later.
REAUTH_MARGIN_MS = 30_000
#: Ably refuses an ``issuedBefore`` more than an hour in the past.
MAX_ISSUED_BEFORE_AGE_MS = 3_600_000
#: Ably accepts at most 100 targets per call.
MAX_TARGETS = 100
#: Longest rotation grace period: 30 days.
MAX_GRACE_MS = 30 * 86_400_000
#: ``last_used_at`` is written at most this often per key and process.
LAST_USED_INTERVAL_MS = 60_000
#: The longest token lifetime: Ably's (and ``TOKENREQ_MAX_TTL``'s) 24 hours.
MAX_TOKEN_TTL_MS = 86_400_000
#: Revocations are kept this long after ``issued_before``: no token issued
#: before then can still be accepted (the longest ttl plus the largest
#: ``TOKENREQ_LEEWAY``, 300 s).
REVOCATION_KEEP_MS = MAX_TOKEN_TTL_MS + 300_000

_CANARY = b"flask-tokenreq encryption canary v1"
# Columns of the key lookup's rows (see SqlKeyStore._get_sql).
_CIPHERTEXT, _NOT_AFTER = 6, 7
_TARGET_TYPES = ("clientId", "revocationKey")


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the token guard needs about a key; nothing secret (safe to keep in memory)."""

    key_name: str
    status: KeyStatus
    expires_at_ms: int | None
    capability: Capability
    revoked_reason: str | None
    #: ``(target_type, value) -> ((issued_before, applies_at), ...)``.
    revocations: Mapping[tuple[str, str], tuple[tuple[int, int], ...]] = field(repr=False)

    def expired(self, now_ms: int) -> bool:
        return expired(self, now_ms)

    def revokes(
        self, client_id: str | None, revocation_key: str | None, issued_ms: int, now_ms: int
    ) -> bool:
        """Whether a token of this key is revoked: the key is, or a ``revokeTokens`` target
        matches its clientId or revocation key, it was issued before the target's
        ``issuedBefore`` and the revocation applies at ``now_ms``."""
        if self.status == "revoked":
            return True
        if not self.revocations:
            return False
        for target in (("clientId", client_id), ("revocationKey", revocation_key)):
            if target[1] is None:
                continue
            for issued_before, applies_at in self.revocations.get(target, ()):  # type: ignore[arg-type]
                if issued_ms < issued_before and now_ms >= applies_at:
                    return True
        return False


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A managed key as lists and the key page show it: no secret, only its hint."""

    key_name: str
    name: str
    capability: Capability
    status: KeyStatus
    created_ms: int
    expires_ms: int | None
    revoked_ms: int | None
    revoked_reason: str | None
    last_used_ms: int | None
    #: ``tkr_ab…wxyz`` of the current secret.
    hint: str | None

    @property
    def display(self) -> str:
        """``appId.keyId:tkr_ab…wxyz``."""
        return f"{self.key_name}:{self.hint or 'tkr_…'}"

    def effective_status(self, now_ms: int) -> Literal["active", "revoked", "expired"]:
        if self.status == "revoked":
            return "revoked"
        if has_passed(self.expires_ms, now_ms):
            return "expired"
        return "active"

    def to_dict(self, now_ms: int) -> dict[str, Any]:
        """JSON for the CLI and the key page (Ably's camelCase; times in ms)."""
        return {
            "keyName": self.key_name,
            "name": self.name,
            "display": self.display,
            "capability": self.capability.to_dict(),
            "status": self.effective_status(now_ms),
            "created": self.created_ms,
            "expires": self.expires_ms,
            "revoked": self.revoked_ms,
            "revokedReason": self.revoked_reason,
            "lastUsed": self.last_used_ms,
        }


def _fernet(encryption_keys: object) -> MultiFernet:
    """A MultiFernet of the configured keys, newest first.

    Validated by the settings registry's check (one place for its messages):
    a list of Fernet keys, never a bare string; ConfigError names the setting.
    """
    keys = fernet_keys(ENCRYPTION_SETTING, encryption_keys)
    return MultiFernet([Fernet(key) for key in keys])


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameter("A key needs a name (free text such as 'CI Key')")
    name = name.strip()
    if len(name) > 200 or not name.isprintable():
        raise InvalidParameter("A key name has at most 200 printable characters")
    return name


def _check_capability(capability: object) -> Capability:
    if capability is None:
        return Capability.all()
    cap = Capability.parse(capability)  # type: ignore[arg-type]  # InvalidCapability: 400
    if cap.is_empty():
        raise InvalidParameter("The key's capability grants nothing")
    return cap


def _check_ms(what: str, value: object, *, minimum: int, maximum: int, bounds: str) -> int:
    """``value`` if it is an integer from ``minimum`` to ``maximum``; ``bounds`` says
    which in the 400's message. Every millisecond input has a maximum: an integer
    that does not fit the database's 64-bit columns must be a 400, never a 500."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{what} must be an integer number of milliseconds")
    if not minimum <= value <= maximum:
        raise InvalidParameter(f"{what} is out of range: {bounds}")
    return value


def _check_actor(actor: object) -> str | None:
    if actor is not None and (
        not isinstance(actor, str) or len(actor) > 255 or not _storable(actor)
    ):
        raise InvalidParameter("actor must be a string of at most 255 characters")
    return actor


class SqlKeyStore:
    """Managed keys in SQL, secrets encrypted with Fernet; see the module docstring.

    ``url_or_engine``: ``TOKENREQ_DATABASE_URL`` (relative SQLite paths go into
    ``instance_path``) or an engine. ``encryption_keys``:
    ``TOKENREQ_KEY_ENCRYPTION_KEYS``, newest first. ``app_id``: the part
    before the ``.`` of new key names. ``audit``/``audit_retention_days``:
    ``TOKENREQ_AUDIT``/``TOKENREQ_AUDIT_RETENTION``. ``reserved(key_name)``:
    names :meth:`create` must not use (the static keys': a managed key never
    shadows one). The constructor does no I/O; call :meth:`create_tables`
    (idempotent) and :meth:`check` at start.
    """

    def __init__(
        self,
        url_or_engine: str | sa.Engine,
        encryption_keys: Sequence[str],
        *,
        now_ms: Clock = now_ms,
        app_id: str = DEFAULT_APP_ID,
        instance_path: str | None = None,
        audit: bool = True,
        audit_retention_days: float | None = DEFAULT_RETENTION_DAYS,
        reserved: Callable[[str], bool] | None = None,
    ) -> None:
        if not valid_app_id(app_id):
            raise ConfigError("the app id of managed keys has 1 to 64 of A-Z a-z 0-9 _ -")
        self._fernet = _fernet(encryption_keys)
        self._db = Database(url_or_engine, instance_path=instance_path, name="key store")
        self._now = now_ms
        self.app_id = app_id
        self._reserved = reserved
        #: The audit log in the same database (key changes share its transactions).
        self.audit = AuditLog(
            self._db, now_ms=now_ms, enabled=audit, retention_days=audit_retention_days
        )
        #: The guard's cache, replaced whole: ``(mark, generation, states)``. ``mark``:
        #: the change counter's value read before ``generation`` (SQLite; else ``None``).
        self._snapshot: tuple[int | None, int | None, dict[str, KeyState]] = (None, None, {})
        self._cache_lock = threading.Lock()
        self._counter: ChangeCounter | None = None
        self._counter_error: str | None = None
        self._counter_opened = False
        self._last_used: dict[str, int] = {}
        # The two statements of the hot paths, compiled once (see Database.fetch).
        g, k, sec = models.generation, models.keys, models.key_secrets
        self._generation_sql = self._db.prepare(sa.select(g.c.value).where(g.c.id == 1))
        self._get_sql = self._db.prepare(
            sa.select(
                k.c.name,
                k.c.capability,
                k.c.status,
                k.c.expires_at,
                k.c.created_at,
                k.c.revoked_reason,
                sec.c.ciphertext,
                sec.c.not_after,
            )
            .join(sec, sec.c.key_name == k.c.key_name)
            .where(
                k.c.key_name == sa.bindparam("key_name"),
                sa.or_(sec.c.not_after.is_(None), sec.c.not_after >= sa.bindparam("now")),
            )
            .order_by(sec.c.id.desc())
        )

    def __repr__(self) -> str:
        return f"SqlKeyStore({self._db.url!r})"

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        self.audit.close()
        self._db.dispose()
        with self._cache_lock:
            if self._counter is not None:
                self._counter.close()
            self._counter, self._counter_opened = None, False  # reopened if used again

    # -- the change counter (SQLite; keys/changes.py)

    def _change_counter(self) -> ChangeCounter | None:
        """The counter beside a SQLite database in WAL mode, opened once; ``None``
        for other databases, or when it cannot be opened (``_counter_error`` says why)."""
        if not self._counter_opened:
            with self._cache_lock:
                if not self._counter_opened:
                    self._counter = self._open_counter()
                    self._counter_opened = True
        return self._counter

    def _open_counter(self) -> ChangeCounter | None:
        """Database errors propagate (the next call tries again); a counter file that
        cannot be opened is remembered: this process then reads the database on
        every guarded request and refuses changes."""
        self._counter_error = None
        path = self._db.sqlite_file
        if path is None or not changes.supported():
            return None
        with self._db.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        if str(mode).lower() != "wal":
            return None  # not tied to this host's shared memory: read the database
        try:
            return ChangeCounter(path + changes.SUFFIX)
        except OSError as exc:
            self._counter_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            logger.warning("key store: no change counter beside %s: %s", path, self._counter_error)
            return None

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Around the transaction of a change: the change counter, when there is one.

        A change that cannot signal itself to the processes that cache through
        the counter is not made (fail closed).
        """
        counter = self._change_counter()
        if counter is None:
            if self._counter_error is not None:
                # The file's path and the reason are in the log line of _open_counter.
                raise StoreUnavailable(
                    "The key store's change counter cannot be opened, so key changes are "
                    "refused (the server log says why)"
                )
            yield
            return
        with counter.changing():
            yield

    # -- set-up

    def create_tables(self) -> None:
        """Create the tables and their one-row tables if missing (safe in parallel processes)."""
        self._db.guard(self._create_tables)

    def _create_tables(self) -> None:
        self._db.create_all(models.metadata)
        self._seed()

    def _seed(self) -> None:
        """Insert the meta row (schema version, canary) and the generation row if missing."""
        for table, values in (
            (
                models.meta,
                {
                    "id": 1,
                    "schema_version": models.SCHEMA_VERSION,
                    "encryption_canary": self._fernet.encrypt(_CANARY).decode("ascii"),
                },
            ),
            (models.generation, {"id": 1, "value": 0}),
        ):
            try:
                with self._db.write() as conn:
                    exists = conn.execute(sa.select(table.c.id).where(table.c.id == 1)).first()
                    if exists is None:
                        conn.execute(table.insert().values(values))
            except sa.exc.IntegrityError:
                pass  # another process inserted it first

    def check(self) -> None:
        """Verify the schema version and that the encryption keys decrypt what is stored.

        Raises :class:`ConfigError` (tables missing or of another version;
        the canary or a stored secret not decryptable with
        ``TOKENREQ_KEY_ENCRYPTION_KEYS``) or :class:`StoreUnavailable`.
        Messages never contain a secret or a key.
        """
        self._db.guard(self._check)

    def _check(self) -> None:
        names = set(sa.inspect(self._db.engine).get_table_names())
        missing = sorted(t.name for t in models.metadata.sorted_tables if t.name not in names)
        if missing:
            raise ConfigError(
                f"the managed-key tables are missing ({', '.join(missing)}) in {self._db.url}: "
                "run `flask tokenreq db init` (or your migrations)"
            )
        with self._db.read() as conn:
            row = conn.execute(sa.select(models.meta).where(models.meta.c.id == 1)).first()
        if row is None or row.encryption_canary is None:
            self._seed_canary()
            with self._db.read() as conn:
                row = conn.execute(sa.select(models.meta).where(models.meta.c.id == 1)).one()
        if row.schema_version != models.SCHEMA_VERSION:
            raise ConfigError(
                f"the managed-key tables in {self._db.url} have schema version "
                f"{row.schema_version}; this flask-tokenreq uses {models.SCHEMA_VERSION}"
                + (": upgrade flask-tokenreq" if row.schema_version > models.SCHEMA_VERSION else "")
            )
        if not self._decrypts(row.encryption_canary):
            raise ConfigError(
                f"{ENCRYPTION_SETTING} does not decrypt the database's encryption canary: "
                "the database was written with other encryption keys. Configure the same "
                "keys on every host (newest first; keep old ones until `flask tokenreq keys "
                "reencrypt` has run)"
            )
        with self._db.read() as conn:
            ciphertexts = conn.execute(sa.select(models.key_secrets.c.ciphertext)).scalars().all()
        failed = sum(1 for c in ciphertexts if not self._decrypts(c))
        if failed:
            raise ConfigError(
                f"{ENCRYPTION_SETTING} cannot decrypt {failed} of {len(ciphertexts)} stored key "
                "secret(s): a key they were encrypted with is missing from the list. Add it "
                "back (after the newest), then run `flask tokenreq keys reencrypt`"
            )

    def _seed_canary(self) -> None:
        if not self._seed_ok():
            self._seed()
        canary = self._fernet.encrypt(_CANARY).decode("ascii")
        with self._db.write() as conn:
            conn.execute(
                models.meta.update()
                .where(models.meta.c.id == 1, models.meta.c.encryption_canary.is_(None))
                .values(encryption_canary=canary)
            )

    def _seed_ok(self) -> bool:
        with self._db.read() as conn:
            return conn.execute(sa.select(models.meta.c.id)).first() is not None

    def _decrypts(self, ciphertext: str) -> bool:
        try:
            self._fernet.decrypt(ciphertext.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            return False
        return True

    def _decrypt(self, key_name: str, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            logger.error(
                "key store %s: the secret of key %s cannot be decrypted with %s (a host with "
                "other encryption keys wrote it?); requests with this key fail with 503",
                self._db.url,
                key_name,
                ENCRYPTION_SETTING,
            )
            raise StoreUnavailable(
                "The key store cannot decrypt this key's secret (encryption keys differ)"
            ) from None

    def _encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode("ascii")).decode("ascii")

    # -- reads

    def get(self, key_name: str) -> ApiKey | None:
        """The key with its current secret and those still in grace, or ``None``.

        Read from the database on every call (a cache would hold secrets).
        A revoked key is returned with ``status="revoked"``; an expired one
        with its ``expires_at_ms`` in the past.
        """
        if not _plausible_name(key_name):
            return None
        return self._db.guard(lambda: self._get(key_name))

    def _get(self, key_name: str) -> ApiKey | None:
        rows = self._db.fetch(self._get_sql, {"key_name": key_name, "now": self._now()})
        if not rows:
            return None
        current = [r for r in rows if r[_NOT_AFTER] is None]
        if len(current) != 1:
            logger.error("key store %s: key %s has no current secret", self._db.url, key_name)
            raise StoreUnavailable("The key store holds no current secret for this key")
        name, capability, status, expires_at, created_at, reason, ciphertext, _ = current[0]
        previous = tuple(
            GraceSecret(self._decrypt(key_name, r[_CIPHERTEXT]), r[_NOT_AFTER])
            for r in rows
            if r[_NOT_AFTER] is not None
        )
        return ApiKey(
            key_name,
            self._decrypt(key_name, ciphertext),
            Capability.parse(capability),
            status,
            expires_at,
            previous_secrets=previous,
            name=name,
            created_ms=created_at,
            revoked_reason=reason,
            managed=True,
        )

    def state(self, key_name: str) -> KeyState | None:
        """What the token guard needs about a key (status, expiry, capability, revocations).

        Served from memory while the generation counter is unchanged: one
        primary-key read per call. ``None`` for a name that is not a managed key.
        """
        if not _plausible_name(key_name):
            return None
        return self._db.guard(lambda: self._state(key_name))

    def _state(self, key_name: str) -> KeyState | None:
        # The change counter (SQLite), then the generation: each is read before
        # what it vouches for, so a cached state is never older than either.
        counter = self._change_counter()
        mark = counter.read() if counter is not None else None
        if mark is not None and mark % 2:
            mark = None  # a change in progress: read the database
        if mark is not None:
            snap_mark, _, states = self._snapshot
            if snap_mark == mark:  # no change has begun since the states were read
                cached = states.get(key_name)
                if cached is not None:
                    return cached
        found = self._db.fetch(self._generation_sql, {})
        generation = found[0][0] if found else -1  # not seeded: read every time
        snap_mark, snap_generation, states = self._snapshot
        state = states.get(key_name) if generation == snap_generation else None
        if state is not None and (mark is None or mark == snap_mark):
            return state
        if state is None:
            with self._db.read() as conn:
                state = self._load_state(conn, key_name)
        if generation >= 0:
            # Entries are only added under the generation they were read after, and
            # the mark is this call's: one read before that generation.
            with self._cache_lock:
                _, snap_generation, states = self._snapshot
                if snap_generation != generation:
                    states = {}
                if state is not None:
                    states[key_name] = state
                self._snapshot = (mark, generation, states)
        return state

    def _load_state(self, conn: sa.Connection, key_name: str) -> KeyState | None:
        k, r = models.keys, models.token_revocations
        row = conn.execute(
            sa.select(k.c.status, k.c.expires_at, k.c.capability, k.c.revoked_reason).where(
                k.c.key_name == key_name
            )
        ).first()
        if row is None:
            return None
        revocations: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for rev in conn.execute(
            sa.select(r.c.target_type, r.c.value, r.c.issued_before, r.c.applies_at).where(
                r.c.key_name == key_name
            )
        ):
            revocations.setdefault((rev.target_type, rev.value), []).append(
                (rev.issued_before, rev.applies_at)
            )
        return KeyState(
            key_name,
            row.status,
            row.expires_at,
            Capability.parse(row.capability),
            row.revoked_reason,
            {t: tuple(v) for t, v in revocations.items()},
        )

    def token_revoked(
        self,
        key_name: str,
        client_id: str | None,
        revocation_key: str | None,
        issued_ms: int,
        now: int | None = None,
    ) -> bool:
        """Whether a token of ``key_name`` issued at ``issued_ms`` is revoked (40141).

        True when the key is revoked, or a ``revokeTokens`` target matches the
        token's clientId or revocation key, the token was issued before the
        target's ``issuedBefore``, and the revocation applies at ``now``.
        False for a key this store does not know (a static key). Expiry is
        separate (40132): see :meth:`state`.
        """
        st = self.state(key_name)
        if st is None:
            return False
        return st.revokes(client_id, revocation_key, issued_ms, self._now() if now is None else now)

    def list(self, status: ListStatus = "active") -> builtins.list[KeyInfo]:
        """Managed keys, oldest first, without secrets.

        ``active``: usable now; ``revoked``; ``expired`` (past ``expires``,
        not revoked); ``all``.
        """
        status = check_list_status(status)
        infos = self._db.guard(self._list)
        now = self._now()
        if status == "all":
            return infos
        return [i for i in infos if i.effective_status(now) == status]

    def describe(self, key_name: str) -> KeyInfo | None:
        """One managed key without its secret, or ``None``."""
        if not _plausible_name(key_name):
            return None
        found = self._db.guard(lambda: self._list(key_name))
        return found[0] if found else None

    def _list(self, key_name: str | None = None) -> builtins.list[KeyInfo]:
        k, s = models.keys, models.key_secrets
        stmt = (
            sa.select(k, s.c.hint)
            .select_from(
                k.outerjoin(s, sa.and_(s.c.key_name == k.c.key_name, s.c.not_after.is_(None)))
            )
            .order_by(k.c.created_at, k.c.key_name)
        )
        if key_name is not None:
            stmt = stmt.where(k.c.key_name == key_name)
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        return [
            KeyInfo(
                key_name=r.key_name,
                name=r.name,
                capability=Capability.parse(r.capability),
                status=r.status,
                created_ms=r.created_at,
                expires_ms=r.expires_at,
                revoked_ms=r.revoked_at,
                revoked_reason=r.revoked_reason,
                last_used_ms=r.last_used_at,
                hint=r.hint,
            )
            for r in rows
        ]

    # -- changes (each one transaction: the change, the generation bump, the audit row)

    def _bump(self, conn: sa.Connection) -> None:
        """Increment the generation counter (first statement: on PostgreSQL its row
        lock serializes key changes; SQLite's BEGIN IMMEDIATE already has)."""
        g = models.generation
        if conn.execute(g.update().where(g.c.id == 1).values(value=g.c.value + 1)).rowcount == 0:
            conn.execute(g.insert().values(id=1, value=1))

    @contextlib.contextmanager
    def _change(self) -> Iterator[AuditTransaction]:
        """The transaction of one key change: the generation bump first, then the
        change and its audit rows, committed together (seen at once everywhere).

        The audit signals go out after the commit and after the change counter
        is released, on every database alike: a receiver may change keys too.
        """
        with self._changing(), self.audit.transaction(emit=False) as tx:
            self._bump(tx.conn)
            yield tx
        tx.emit()

    def _key_row(self, conn: sa.Connection, key_name: str, *, if_revoked: str | None = None) -> Any:
        """The key's row (404 without one). Revoking is final: for a change that a
        revoked key cannot have, ``if_revoked`` is the message of its 409."""
        if not _plausible_name(key_name):
            raise NotFound("No managed key with that name")
        row = conn.execute(sa.select(models.keys).where(models.keys.c.key_name == key_name)).first()
        if row is None:
            raise NotFound(f"No managed key {key_name!r}")
        if if_revoked is not None and row.status == "revoked":
            raise Conflict(f"Key {key_name!r} {if_revoked}")
        return row

    def create(
        self,
        name: str,
        capability: str | Mapping[str, Any] | Capability | None = None,
        expires_ms: int | None = None,
        actor: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key: ``(ApiKey, "appId.keyId:tkr_…")``. The full key is shown this once.

        ``capability``: what tokens from it may at most do (default: everything).
        ``expires_ms``: when it stops working (ms since the epoch), in the future.
        """
        name = _check_name(name)
        cap = _check_capability(capability)
        now = self._now()
        if expires_ms is not None:
            _check_ms(
                "expires",
                expires_ms,
                minimum=now + 1,
                maximum=MAX_EXPIRES_MS,
                bounds=f"it must be in the future and at most {MAX_EXPIRES_MS} "
                "(the end of the year 9999), in ms since the epoch",
            )
        actor = _check_actor(actor)
        secret = new_secret()
        ciphertext = self._encrypt(secret)
        for attempt in range(3):
            key_name = f"{self.app_id}.{new_key_id()}"
            try:
                if self._reserved is not None and self._reserved(key_name):
                    raise _Collision
                self._db.guard(
                    functools.partial(
                        self._create, key_name, name, cap, expires_ms, actor, ciphertext, secret
                    )
                )
            except _Collision:
                if attempt == 2:
                    raise StoreUnavailable("Could not find a free key id") from None
                continue
            key = ApiKey(
                key_name,
                secret,
                cap,
                "active",
                expires_ms,
                name=name,
                created_ms=now,
                managed=True,
            )
            return key, f"{key_name}:{secret}"
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(
        self,
        key_name: str,
        name: str,
        cap: Capability,
        expires_ms: int | None,
        actor: str | None,
        ciphertext: str,
        secret: str,
    ) -> None:
        now = self._now()
        try:
            with self._change() as tx:
                conn = tx.conn
                if conn.execute(
                    sa.select(models.keys.c.key_name).where(models.keys.c.key_name == key_name)
                ).first():
                    raise _Collision
                conn.execute(
                    models.keys.insert().values(
                        key_name=key_name,
                        app_id=self.app_id,
                        name=name,
                        capability=cap.canonical,
                        status="active",
                        created_at=now,
                        expires_at=expires_ms,
                    )
                )
                self._insert_secret(conn, key_name, ciphertext, secret, now)
                tx.write(
                    "key.created",
                    at=now,
                    key_name=key_name,
                    actor=actor,
                    detail={"name": name, "capability": cap.to_dict(), "expires": expires_ms},
                )
        except sa.exc.IntegrityError:
            raise _Collision from None

    def _insert_secret(
        self, conn: sa.Connection, key_name: str, ciphertext: str, secret: str, now: int
    ) -> None:
        conn.execute(
            models.key_secrets.insert().values(
                key_name=key_name,
                ciphertext=ciphertext,
                hint=hint(secret),
                created_at=now,
                not_after=None,
            )
        )

    def rotate(self, key_name: str, grace_ms: int = 0, actor: str | None = None) -> str:
        """A new secret for ``key_name``; returns the full key (shown this once).

        The previous secret keeps verifying until now + ``grace_ms`` (inclusive);
        ``grace_ms=0`` refuses it, and any earlier one still in grace, at once.
        Tokens already issued stay valid: rotation is not revocation.
        """
        _check_ms(
            "grace",
            grace_ms,
            minimum=0,
            maximum=MAX_GRACE_MS,
            bounds=f"from 0 to {MAX_GRACE_MS} ms (30 days)",
        )
        actor = _check_actor(actor)
        secret = new_secret()
        ciphertext = self._encrypt(secret)

        def run() -> None:
            now = self._now()
            s = models.key_secrets
            with self._change() as tx:
                conn = tx.conn
                revoked = "is revoked; a revoked key cannot be rotated"
                row = self._key_row(conn, key_name, if_revoked=revoked)
                if has_passed(row.expires_at, now):
                    raise Conflict(f"Key {key_name!r} has expired; create a new key instead")
                mine = s.c.key_name == key_name
                if grace_ms == 0:
                    conn.execute(sa.delete(s).where(mine))
                else:
                    # Secrets whose grace is over go now; the current one starts its grace.
                    conn.execute(sa.delete(s).where(mine, s.c.not_after < now))
                    current = s.c.not_after.is_(None)
                    conn.execute(s.update().where(mine, current).values(not_after=now + grace_ms))
                self._insert_secret(conn, key_name, ciphertext, secret, now)
                tx.write(
                    "key.rotated",
                    at=now,
                    key_name=key_name,
                    actor=actor,
                    detail={"grace": grace_ms, "graceUntil": now + grace_ms if grace_ms else None},
                )

        self._db.guard(run)
        return f"{key_name}:{secret}"

    def revoke(self, key_name: str, reason: str, actor: str | None = None) -> KeyInfo:
        """Revoke ``key_name`` for good: exchanges and key auth get 40131, its tokens 40141."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidParameter("Revoking a key needs a reason")
        reason = reason.strip()
        if len(reason) > 500 or not _storable(reason):
            raise InvalidParameter("A revocation reason has at most 500 characters (no NUL)")
        actor = _check_actor(actor)

        def run() -> None:
            now = self._now()
            k = models.keys
            with self._change() as tx:
                conn = tx.conn
                self._key_row(conn, key_name, if_revoked="is already revoked")
                conn.execute(
                    k.update()
                    .where(k.c.key_name == key_name)
                    .values(status="revoked", revoked_at=now, revoked_reason=reason)
                )
                tx.write(
                    "key.revoked",
                    at=now,
                    key_name=key_name,
                    actor=actor,
                    detail={"reason": reason},
                )

        self._db.guard(run)
        info = self.describe(key_name)
        assert info is not None
        return info

    def revoke_tokens(
        self,
        key_name: str,
        targets: Sequence[str],
        issued_before: int | None = None,
        allow_reauth_margin: bool = False,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Ably's ``revokeTokens``: refuse (40141) the key's tokens that match a target.

        ``targets``: a list of ``"clientId:<id>"`` or ``"revocationKey:<value>"``
        strings; one that is not gets an error entry, and nothing is changed
        for it.
        Tokens issued before ``issued_before`` (default: now; not in the
        future, not more than an hour ago) are refused from ``appliesAt`` on:
        now, or 30 s later with ``allow_reauth_margin``. Returns Ably's batch
        result ``{"successCount", "failureCount", "results"}``: per target
        ``{"target", "issuedBefore", "appliesAt"}``, or ``{"target", "error"}``.
        """
        if not isinstance(targets, (list, tuple)):
            raise InvalidParameter(
                "targets must be an array of 'clientId:<id>' or 'revocationKey:<value>' strings"
            )
        target_list = list(targets)
        if not target_list:
            raise InvalidParameter("targets must list at least one target")
        if len(target_list) > MAX_TARGETS:
            raise InvalidParameter(f"At most {MAX_TARGETS} targets per request")
        if not isinstance(allow_reauth_margin, bool):
            raise InvalidParameter("allowReauthMargin must be true or false")
        actor = _check_actor(actor)
        now = self._now()
        if issued_before is None:
            before = now
        else:
            before = _check_ms(
                "issuedBefore",
                issued_before,
                minimum=now - MAX_ISSUED_BEFORE_AGE_MS,
                maximum=now,
                bounds="it must not be in the future, nor more than an hour in the past",
            )
        applies_at = now + REAUTH_MARGIN_MS if allow_reauth_margin else now

        results: list[dict[str, Any]] = []
        accepted: list[tuple[str, str, str]] = []
        for target in target_list:
            error = target_error(target)
            if error is not None:
                results.append({"target": _shown(target), **error})
                continue
            kind, _, value = target.partition(":")
            accepted.append((target, kind, value))
            results.append({"target": target, "issuedBefore": before, "appliesAt": applies_at})

        def run() -> None:
            r = models.token_revocations
            with self._change() as tx:
                conn = tx.conn
                self._key_row(conn, key_name)
                conn.execute(
                    r.insert(),
                    [
                        {
                            "key_name": key_name,
                            "target_type": kind,
                            "value": value,
                            "issued_before": before,
                            "applies_at": applies_at,
                            "created_at": now,
                        }
                        for _, kind, value in accepted
                    ],
                )
                # Revocations only grow through this call, so it also drops
                # those that can no longer match a live token.
                _purge_revocations(conn, now - REVOCATION_KEEP_MS)
                tx.write(
                    "tokens.revoked",
                    at=now,
                    key_name=key_name,
                    actor=actor,
                    detail={
                        "targets": [t for t, _, _ in accepted],
                        "issuedBefore": before,
                        "appliesAt": applies_at,
                    },
                )

        if accepted:
            self._db.guard(run)
        elif self.describe(key_name) is None:
            raise NotFound(f"No managed key {key_name!r}")
        return {
            "successCount": len(accepted),
            "failureCount": len(results) - len(accepted),
            "results": results,
        }

    def purge_revocations(self, keep_ms: int = REVOCATION_KEEP_MS) -> int:
        """Delete token revocations whose ``issuedBefore`` is more than ``keep_ms`` ago
        (by default: that can no longer match a live token); the count.

        :meth:`revoke_tokens` does it too, in its own transaction, so the table
        stays small without a scheduled job.
        """
        _check_ms(
            "keep_ms",
            keep_ms,
            minimum=0,
            maximum=MAX_EXPIRES_MS,
            bounds=f"from 0 to {MAX_EXPIRES_MS} ms",
        )

        def run() -> int:
            with self._changing(), self._db.write() as conn:
                self._bump(conn)
                return _purge_revocations(conn, self._now() - keep_ms)

        return self._db.guard(run)

    def reencrypt(self, actor: str | None = None) -> int:
        """Re-encrypt every stored secret (and the canary) under the newest encryption key.

        One transaction; returns how many secrets were rewritten. Raises
        :class:`ConfigError`, changing nothing, when one cannot be decrypted.
        """
        actor = _check_actor(actor)

        def run() -> int:
            s, m = models.key_secrets, models.meta
            with self._change() as tx:
                conn = tx.conn
                rows = conn.execute(sa.select(s.c.id, s.c.ciphertext)).all()
                updates = []
                for row in rows:
                    try:
                        new = self._fernet.rotate(row.ciphertext.encode("ascii"))
                    except InvalidToken:
                        raise ConfigError(
                            f"{ENCRYPTION_SETTING} cannot decrypt every stored secret; nothing "
                            "was re-encrypted. Put the old key back in the list (after the newest)"
                        ) from None
                    updates.append({"row_id": row.id, "ciphertext": new.decode("ascii")})
                if updates:
                    conn.execute(
                        s.update()
                        .where(s.c.id == sa.bindparam("row_id"))
                        .values(ciphertext=sa.bindparam("ciphertext")),
                        updates,
                    )
                conn.execute(
                    m.update()
                    .where(m.c.id == 1)
                    .values(encryption_canary=self._fernet.encrypt(_CANARY).decode("ascii"))
                )
                tx.write("key.reencrypted", actor=actor, detail={"secrets": len(updates)})
                return len(updates)

        return self._db.guard(run)

    def note_used(self, key_name: str) -> None:
        """Record that a key was used (``last_used_at``), at most once a minute per process.

        Not a key change (no generation bump, no audit row); a failure is logged, not raised.
        """
        now = self._now()
        last = self._last_used.get(key_name)
        if last is not None and now - last < LAST_USED_INTERVAL_MS:
            return
        self._last_used[key_name] = now
        k = models.keys
        try:
            with self._db.write() as conn:
                conn.execute(
                    k.update()
                    .where(
                        k.c.key_name == key_name,
                        sa.or_(
                            k.c.last_used_at.is_(None),
                            k.c.last_used_at <= now - LAST_USED_INTERVAL_MS,
                        ),
                    )
                    .values(last_used_at=now)
                )
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("key store %s: last-used not recorded: %s", self._db.url, describe(exc))


def _plausible_name(key_name: object) -> bool:
    """Whether ``key_name`` could be stored at all (a client may send anything).

    Anything else is simply not a key: no query, and no database error
    (PostgreSQL refuses NUL, lone surrogates cannot be encoded) for client input.
    """
    return (
        type(key_name) is str
        and 0 < len(key_name) <= models.KEY_NAME_LENGTH
        and _storable(key_name)
    )


def _storable(text: str) -> bool:
    """Text every database can hold: no NUL (PostgreSQL), no lone surrogates (UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _purge_revocations(conn: sa.Connection, cutoff: int) -> int:
    """Delete the revocations with ``issued_before`` before ``cutoff``; the count."""
    r = models.token_revocations
    return int(conn.execute(sa.delete(r).where(r.c.issued_before < cutoff)).rowcount)


class _Collision(Exception):
    """A new key id that already exists (retried with another)."""


def target_error(target: object) -> dict[str, Any] | None:
    """The Ably failure entry for a ``revokeTokens`` target that cannot be revoked, else
    ``None`` (``{"error": {"message", "code", "statusCode"}}``)."""

    def error(message: str, code: int = 40003) -> dict[str, Any]:
        return {"error": {"message": message, "code": code, "statusCode": 400}}

    if not isinstance(target, str):
        return error("A target is a string 'type:value'")
    kind, sep, value = target.partition(":")
    if not sep or not value:
        return error("A target looks like 'clientId:<id>' or 'revocationKey:<value>'")
    if kind not in _TARGET_TYPES:
        return error(
            f"Target type {kind[:40]!r} is not supported here; use clientId or revocationKey"
        )
    if len(value) > 1024 or not _storable(value):
        return error(
            "A target value has at most 1024 characters of Unicode text (no NUL, no lone surrogate)"
        )
    return None


def _shown(target: object) -> str | None:
    """A refused target as its error entry shows it: always encodable (a lone
    surrogate is escaped as ``\\udxxx``), ``None`` for one that is not a string."""
    if not isinstance(target, str):
        return None
    return target.encode("utf-8", "backslashreplace").decode("utf-8")
