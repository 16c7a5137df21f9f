"""Keys fixed in configuration (``TOKENREQ_PROVIDER_KEYS``), read once at ``init_app``.

Static keys cannot be rotated or revoked while the app runs: change the
setting and restart. Managed keys (:mod:`flask_tokenreq.keys.sql`) can.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from ..capability import Capability, InvalidCapability
from ..errors import ConfigError
from .base import MAX_EXPIRES_MS, ApiKey, configured_key

#: The setting :meth:`StaticKeyStore.from_config` reads by default.
SETTING = "TOKENREQ_PROVIDER_KEYS"

_OBJECT_FIELDS = frozenset({"key", "capability", "revoked", "expires"})


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
        """Parse a ``TOKENREQ_PROVIDER_KEYS`` value.

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


def _parse_item(item: object, where: str) -> ApiKey:
    if isinstance(item, str):
        key_name, secret = configured_key(where, item)
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
    key_name, secret = configured_key(f"{where}.key", item.get("key"))
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
    if expires is not None and (
        isinstance(expires, bool) or not isinstance(expires, int) or expires > MAX_EXPIRES_MS
    ):
        raise ConfigError(
            f"{where}.expires must be an integer (ms since the epoch) of at most "
            f"{MAX_EXPIRES_MS} (the end of the year 9999)"
        )
    return ApiKey(key_name, secret, capability, "revoked" if revoked else "active", expires)
