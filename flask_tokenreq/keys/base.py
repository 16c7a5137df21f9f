"""What the provider knows about a key, the one parser of key strings, the store protocol.

A key is ``appId.keyId:secret`` (Ably's form); its ``keyName`` is the part
before the first ``:``. :func:`parse_key` is the only place that splits one:
the signer, the settings and the key stores all call it, so they agree on
what a key is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..capability import Capability
from ..errors import ConfigError, InvalidParameter, KeyExpired, KeyRevoked
from ..stores.base import MAX_KEY_NAME_LENGTH

KeyStatus = Literal["active", "revoked"]
#: What a key listing can select: usable now, revoked, past ``expires`` (not revoked), all.
ListStatus = Literal["active", "revoked", "expired", "all"]
LIST_STATUSES: tuple[ListStatus, ...] = ("active", "revoked", "expired", "all")

#: Shortest key secret accepted in configuration, in bytes. Ably's own key
#: secrets have 43 characters (256 bits, base64); managed ``tkr_`` secrets 53.
MIN_SECRET_BYTES = 32
#: The latest ``expires`` a key can have: the last millisecond of the year 9999
#: (UTC). Later values overflow the databases' 64-bit integers and datetimes.
MAX_EXPIRES_MS = 253_402_300_799_999

_FORBIDDEN = frozenset("\r\n\t \x00")


def parse_key(key: object) -> tuple[str, str]:
    """Split ``appId.keyId:secret`` into ``(key_name, secret)``.

    The key name is everything before the first ``:`` (Ably's rule), and
    both parts must be non-empty and free of whitespace and control line
    breaks. Raises ``TypeError`` or ``ValueError`` whose message describes the
    expected shape and never echoes the key.
    """
    if not isinstance(key, str):
        raise TypeError("a key must be a string like 'appId.keyId:secret'")
    key_name, sep, secret = key.partition(":")
    if not sep or not key_name or not secret:
        raise ValueError("a key must look like 'appId.keyId:secret': the key name, ':', the secret")
    if any(c in _FORBIDDEN for c in key):
        raise ValueError("a key must not contain whitespace or line breaks")
    return key_name, secret


@dataclass(frozen=True, slots=True)
class GraceSecret:
    """A previous secret that still verifies until ``not_after_ms`` (rotation grace)."""

    value: str = field(repr=False)
    not_after_ms: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key. ``repr`` never shows a secret."""

    key_name: str
    secret: str = field(repr=False)
    capability: Capability = field(default_factory=Capability.all)
    status: KeyStatus = "active"
    #: When the key stops working, in ms since the epoch; ``None`` = never.
    expires_at_ms: int | None = None
    #: Earlier secrets still inside their rotation grace period, newest first.
    previous_secrets: tuple[GraceSecret, ...] = field(default=(), repr=False)
    #: Free text for people ("CI Key"); managed keys only.
    name: str | None = None
    created_ms: int | None = None
    revoked_reason: str | None = None
    #: Whether the key lives in the database (it can be rotated and revoked).
    managed: bool = False

    @property
    def revoked(self) -> bool:
        return self.status == "revoked"

    def expired(self, now_ms: int) -> bool:
        """Whether the key has expired at ``now_ms``."""
        return expired(self, now_ms)

    def check_active(self, now_ms: int) -> None:
        """Raise :class:`KeyRevoked` (40131) or :class:`KeyExpired` (40132) unless usable."""
        check_active(self, now_ms)

    def verifying_secrets(self, now_ms: int) -> tuple[str, ...]:
        """The secrets that verify at ``now_ms``: the current one first, then those in grace.

        Newest first, as itsdangerous tries its key list.
        """
        if not self.previous_secrets:
            return (self.secret,)
        in_grace = (s.value for s in self.previous_secrets if now_ms <= s.not_after_ms)
        return (self.secret, *in_grace)


class KeyView(Protocol):
    """What the token guard needs about a key: its status, expiry and capability.

    Nothing secret. :class:`ApiKey` is one; so is the managed-key store's
    :class:`~flask_tokenreq.keys.sql.KeyState`, which also has
    ``revokes(client_id, revocation_key, issued_ms, now_ms) -> bool``: whether
    ``revokeTokens`` refuses a token of the key. A view without that method
    revokes no single token (only the whole key, through its status).
    """

    @property
    def key_name(self) -> str: ...

    @property
    def status(self) -> KeyStatus: ...

    @property
    def expires_at_ms(self) -> int | None: ...

    @property
    def capability(self) -> Capability: ...


def has_passed(expires_ms: int | None, now_ms: int) -> bool:
    """The one expiry rule: an expiry (ms; ``None`` for never) has come at that very ms."""
    return expires_ms is not None and now_ms >= expires_ms


def expired(key: KeyView, now_ms: int) -> bool:
    """Whether ``key`` has expired at ``now_ms`` (at its ``expires_at_ms`` or later)."""
    return has_passed(key.expires_at_ms, now_ms)


def check_list_status(status: object) -> ListStatus:
    """``status`` as a listing filter; :class:`InvalidParameter` (400, 40003) otherwise."""
    if status not in LIST_STATUSES:
        raise InvalidParameter("status must be one of active, revoked, expired, all")
    return status


def check_active(key: KeyView, now_ms: int) -> None:
    """The one check of a key's status: :class:`KeyRevoked` (40131), :class:`KeyExpired` (40132).

    Exchanges, key authentication and (through
    :class:`~flask_tokenreq.tokens.TokenService`, which turns 40131 into 40141)
    the token guard all call it.
    """
    if key.status != "active":
        raise KeyRevoked(f"Key {key.key_name!r} has been revoked")
    if expired(key, now_ms):
        raise KeyExpired(f"Key {key.key_name!r} has expired")


@runtime_checkable
class KeyStore(Protocol):
    """Looks keys up by name (``appId.keyId``).

    A store may also offer ``status(key_name) -> KeyView | None``: what the
    token guard needs, without the secrets (see :class:`StatusKeyStore`).
    :class:`~flask_tokenreq.tokens.TokenService` uses it when present, so a
    store whose :meth:`get` is costly (decrypting secrets) is not asked for
    them on every guarded request.
    """

    def get(self, key_name: str) -> ApiKey | None:
        """The key, or ``None`` when no such key exists."""
        ...


@runtime_checkable
class StatusKeyStore(KeyStore, Protocol):
    """A :class:`KeyStore` that can also answer the token guard without secrets."""

    def status(self, key_name: str) -> KeyView | None:
        """The key's non-secret view (status, expiry, capability), or ``None``."""
        ...


def configured_key(setting: str, value: object) -> tuple[str, str]:
    """A key given in configuration: :func:`parse_key`, then the configuration policy.

    Returns ``(key_name, secret)``; raises :class:`ConfigError` naming
    ``setting`` (never the value). Configured keys must have Ably's form
    (``appId.keyId``, at most ``MAX_KEY_NAME_LENGTH`` characters: what the
    nonce stores hold) and a secret of at least :data:`MIN_SECRET_BYTES`: a
    shorter one can be guessed and is always a mistake (a placeholder, a
    truncated paste). :func:`~flask_tokenreq.sign_token_request` itself signs
    with any key :func:`parse_key` accepts, as the Ably SDKs do.
    """
    try:
        key_name, secret = parse_key(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{setting} is malformed: {exc}") from None
    app_id, dot, key_id = key_name.partition(".")
    if not dot or not app_id or not key_id:
        raise ConfigError(
            f"{setting} is malformed: the key name must be 'appId.keyId' (no '.' found)"
        )
    if len(key_name) > MAX_KEY_NAME_LENGTH:
        raise ConfigError(
            f"{setting} is malformed: the key name has {len(key_name)} characters; "
            f"at most {MAX_KEY_NAME_LENGTH} are allowed"
        )
    size = len(secret.encode("utf-8", "surrogatepass"))
    if size < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{setting} has a {size}-byte secret; at least {MIN_SECRET_BYTES} bytes are "
            "required (Ably's key secrets have 43 characters). Use the key Ably gave you, "
            "or make one with: python -c \"import secrets; print('app.key:' + "
            'secrets.token_urlsafe(32))"'
        )
    return key_name, secret
