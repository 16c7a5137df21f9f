"""API keys the provider knows: their secrets, capabilities and status.

Round one serves static keys from ``TOKENREQ_PROVIDER_KEYS`` through
:class:`StaticKeyStore`. Anything with a ``get(key_name)`` method returning an
:class:`ApiKey` (or ``None``) is a :class:`KeyStore`, so managed SQL keys can
plug in later without changing the provider.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .capability import Capability, InvalidCapability
from .config import check_key
from .errors import ConfigError, KeyExpired, KeyRevoked

#: The setting :meth:`StaticKeyStore.from_config` reads by default.
SETTING = "TOKENREQ_PROVIDER_KEYS"

KeyStatus = Literal["active", "revoked"]

_OBJECT_FIELDS = frozenset({"key", "capability", "revoked", "expires"})


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key. ``repr`` never shows the secret."""

    key_name: str
    secret: str = field(repr=False)
    capability: Capability = field(default_factory=Capability.all)
    status: KeyStatus = "active"
    #: When the key stops working, in ms since the epoch; ``None`` = never.
    expires_at_ms: int | None = None

    @property
    def revoked(self) -> bool:
        return self.status == "revoked"

    def expired(self, now_ms: int) -> bool:
        """Whether the key has expired at ``now_ms``."""
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

    def check_active(self, now_ms: int) -> None:
        """Raise :class:`KeyRevoked` (40131) or :class:`KeyExpired` (40132) unless usable."""
        if self.status != "active":
            raise KeyRevoked(f"Key {self.key_name!r} has been revoked")
        if self.expired(now_ms):
            raise KeyExpired(f"Key {self.key_name!r} has expired")


@runtime_checkable
class KeyStore(Protocol):
    """Looks keys up by name (``appId.keyId``)."""

    def get(self, key_name: str) -> ApiKey | None:
        """The key, or ``None`` when no such key exists."""
        ...


class StaticKeyStore:
    """Keys fixed at start-up, held in a dict (lookups are O(1))."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        store: dict[str, ApiKey] = {}
        for key in keys:
            if key.key_name in store:
                raise ConfigError(f"duplicate key name {key.key_name!r}")
            store[key.key_name] = key
        self._keys = store

    def get(self, key_name: str) -> ApiKey | None:
        return self._keys.get(key_name)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._keys.values())

    def __repr__(self) -> str:
        return f"StaticKeyStore({sorted(self._keys)!r})"

    @classmethod
    def from_config(cls, value: object, *, setting: str = SETTING) -> StaticKeyStore:
        """Parse the ``TOKENREQ_PROVIDER_KEYS`` value.

        A list whose items are key strings ``appId.keyId:secret`` (capability:
        everything) or objects ``{"key": ..., "capability": {...},
        "revoked": bool, "expires": ms}``. Raises :class:`ConfigError` naming
        ``setting`` (never echoing a secret).
        """
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            hint = " (wrap a single key in a list)" if isinstance(value, (str, bytes)) else ""
            raise ConfigError(
                f"{setting} must be a list of keys ('appId.keyId:secret' strings or "
                f'{{"key": ..., "capability": ...}} objects), got {type(value).__name__}{hint}'
            )
        keys = [_parse_item(item, f"{setting}[{index}]") for index, item in enumerate(value)]
        names = [k.key_name for k in keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{setting} lists key name(s) {', '.join(dupes)} more than once")
        return cls(keys)

    @classmethod
    def from_app_config(
        cls, config: Mapping[str, Any], *, setting: str = SETTING
    ) -> StaticKeyStore:
        """Read ``setting`` from ``config``, else from the environment (a JSON list)."""
        value = config.get(setting)
        if value is None:
            raw = os.environ.get(setting)
            if raw is None:
                raise ConfigError(
                    f"{setting} is not set: give the provider a list of keys, "
                    "e.g. ['appId.keyId:secret'], or pass keys= to TokenProvider"
                )
            try:
                value = json.loads(raw)
            except ValueError:
                raise ConfigError(
                    f"{setting} must be a JSON list in the environment, "
                    f"e.g. {setting}='[\"appId.keyId:secret\"]'"
                ) from None
        return cls.from_config(value, setting=setting)


def _parse_item(item: object, where: str) -> ApiKey:
    if isinstance(item, str):
        key_name, secret = check_key(where, item)
        return ApiKey(key_name, secret)
    if not isinstance(item, Mapping):
        raise ConfigError(
            f"{where} must be a key string or an object with a 'key', got {type(item).__name__}"
        )
    unknown = sorted(str(k) for k in item if k not in _OBJECT_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; "
            "allowed: key, capability, revoked, expires"
        )
    key_name, secret = check_key(f"{where}.key", item.get("key"))
    capability = Capability.all()
    if item.get("capability") is not None:
        try:
            capability = Capability.parse(item["capability"])
        except InvalidCapability as exc:
            raise ConfigError(f"{where}.capability is invalid: {exc.message}") from None
        if capability.is_empty():
            raise ConfigError(f"{where}.capability grants nothing")
    revoked = item.get("revoked", False)
    if not isinstance(revoked, bool):
        raise ConfigError(f"{where}.revoked must be true or false")
    expires = item.get("expires")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
        raise ConfigError(f"{where}.expires must be an integer (ms since the epoch)")
    return ApiKey(
        key_name,
        secret,
        capability,
        "revoked" if revoked else "active",
        expires,
    )
