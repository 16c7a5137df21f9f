"""The provider's keys: static keys from configuration first, then managed keys.

:class:`KeyChain` is the one :class:`~flask_tokenreq.keys.KeyStore` that the
provider, the ``flask tokenreq`` CLI and the key page use. It decides, in one
place:

- **lookups**: a static key wins; a managed key never shadows one (new
  managed key names avoid the static ones);
- **changes**: a static key cannot be rotated or revoked, nor its tokens
  (409, 40900: it comes from configuration);
- **listings**: :meth:`KeyChain.key_dicts` and :meth:`KeyChain.key_dict`, the
  one JSON shape of a key (never a secret) for the CLI and the key page;
- **readiness**: the managed-key database is set up at start (tables, schema
  version, encryption keys). A wrong encryption key is a
  :class:`~flask_tokenreq.errors.ConfigError` then; a database that is down
  is a warning, every managed lookup fails closed (503, 50003) until it is
  back, and the first one after that finishes the set-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, Conflict, StoreUnavailable
from .base import ApiKey, KeyStore, KeyView, check_list_status
from .static import StaticKeyStore

if TYPE_CHECKING:  # pragma: no cover - SQLAlchemy is imported only with managed keys
    from .sql import SqlKeyStore

__all__ = ["KeyChain"]

log = logging.getLogger("flask_tokenreq")


class KeyChain:
    """Static keys (``TOKENREQ_PROVIDER_KEYS`` or ``keys=``), then managed keys (SQL).

    Either may be ``None`` (or, the static keys, an empty list), not both. Call
    :meth:`open` once at start.
    """

    def __init__(self, static: KeyStore | None, managed: SqlKeyStore | None) -> None:
        no_static = static is None or (isinstance(static, StaticKeyStore) and not static)
        if no_static and managed is None:
            raise ConfigError(
                "the provider has no keys: set TOKENREQ_PROVIDER_KEYS (static keys, e.g. "
                "['appId.keyId:secret']) or TOKENREQ_KEY_ENCRYPTION_KEYS (managed keys), "
                "or pass keys= to TokenProvider"
            )
        self.static = static
        self.managed = managed
        self._ready = managed is None

    def __repr__(self) -> str:
        return f"KeyChain(static={self.static!r}, managed={self.managed!r})"

    # -- set-up

    def open(self) -> None:
        """Set the managed-key database up (at ``init_app``).

        Raises :class:`ConfigError` (wrong encryption keys, tables of another
        version); a database that cannot be reached is logged, not raised.
        """
        if self.managed is None:
            return
        try:
            self._setup(self.managed)
        except StoreUnavailable:
            log.warning(
                "managed keys: the database %s is unavailable at start; requests that need "
                "it are refused (503) until it is back",
                self.managed.database.url,
            )

    def _setup(self, managed: SqlKeyStore) -> None:
        managed.create_tables()
        managed.check()
        self._ready = True
        if self.static is not None:
            for info in managed.list("all"):
                if self.is_static(info.key_name):
                    log.warning(
                        "managed key %s is hidden by the static key of the same name",
                        info.key_name,
                    )

    def _store(self) -> SqlKeyStore:
        """The managed-key store, set up; fails closed (503) while it cannot be."""
        managed = self.managed
        assert managed is not None
        if not self._ready:
            try:
                self._setup(managed)
            except ConfigError as exc:
                # At start this stopped the app; now it can only refuse requests.
                log.error("managed keys: %s", exc)
                raise StoreUnavailable("The key store is not usable (configuration)") from None
        return managed

    # -- lookups (KeyStore)

    def get(self, key_name: str) -> ApiKey | None:
        """The key with its secrets: a static one, else a managed one (read from the database)."""
        key = self._static(key_name)
        if key is not None or self.managed is None:
            return key
        return self._store().get(key_name)

    def status(self, key_name: str) -> KeyView | None:
        """What the token guard needs about a key, without reading a managed key's secrets.

        A managed key's view (:class:`~flask_tokenreq.keys.sql.KeyState`) also
        holds its token revocations: one read serves the whole check.
        """
        key = self._static(key_name)
        if key is not None or self.managed is None:
            return key
        return self._store().state(key_name)

    def _static(self, key_name: str) -> ApiKey | None:
        return None if self.static is None else self.static.get(key_name)

    def is_static(self, key_name: str) -> bool:
        return self._static(key_name) is not None

    def note_used(self, key: ApiKey) -> None:
        """Record that a managed key was used (at most once a minute per process)."""
        if key.managed and self.managed is not None:
            self.managed.note_used(key.key_name)

    def static_keys(self) -> Iterator[ApiKey]:
        """The static keys, when the static store can list them."""
        if isinstance(self.static, Iterable):
            for key in self.static:
                if isinstance(key, ApiKey):
                    yield key

    # -- listings (the CLI and the key page): no secret, not even a static key's hint

    def key_dicts(self, status: str, now_ms: int) -> list[dict[str, Any]]:
        """Every key with ``status`` (``active``, ``revoked``, ``expired``, ``all``) as JSON:
        static keys first, then managed keys oldest first. See :meth:`key_dict`.

        An unknown ``status`` is :class:`~flask_tokenreq.errors.InvalidParameter` (400).
        """
        wanted = check_list_status(status)
        out = [
            d
            for d in (_static_dict(k, now_ms) for k in self.static_keys())
            if wanted in ("all", d["status"])
        ]
        if self.managed is not None:
            for info in self._store().list(wanted):
                if not self.is_static(info.key_name):
                    out.append({**info.to_dict(now_ms), "source": "database"})
        return out

    def key_dict(self, key_name: str, now_ms: int) -> dict[str, Any] | None:
        """One key as JSON, or ``None``: ``keyName``, ``name``, ``display``
        (``appId.keyId:tkr_ab…wxyz``), ``capability``, ``status`` (``active``,
        ``revoked``, ``expired``), ``created``, ``expires``, ``revoked``,
        ``revokedReason``, ``lastUsed`` (ms or ``None``) and ``source``
        (``config`` or ``database``)."""
        static = self._static(key_name)
        if static is not None:
            return _static_dict(static, now_ms)
        if self.managed is None:
            return None
        info = self._store().describe(key_name)
        return None if info is None else {**info.to_dict(now_ms), "source": "database"}

    # -- changes

    def for_change(self, key_name: str | None = None) -> SqlKeyStore:
        """The managed-key store, to change ``key_name`` (or to create a key).

        A static key raises :class:`Conflict` (409, 40900): it comes from
        configuration. So does a change while managed keys are off.
        """
        if key_name is not None and self.is_static(key_name):
            raise Conflict(
                f"Key {key_name!r} comes from configuration (TOKENREQ_PROVIDER_KEYS): change "
                "it there and restart. Only managed keys can be rotated or revoked"
            )
        if self.managed is None:
            raise Conflict(
                "Managed keys are off: set TOKENREQ_KEY_ENCRYPTION_KEYS to create, rotate "
                "and revoke keys"
            )
        return self._store()


def _static_dict(key: ApiKey, now_ms: int) -> dict[str, Any]:
    """A static key as listings show it: no secret, not even a hint."""
    status = "expired" if key.status == "active" and key.expired(now_ms) else key.status
    return {
        "keyName": key.key_name,
        "name": None,
        "display": f"{key.key_name}:…",
        "capability": key.capability.to_dict(),
        "status": status,
        "created": None,
        "expires": key.expires_at_ms,
        "revoked": None,
        "revokedReason": None,
        "lastUsed": None,
        "source": "config",
    }
