"""The Ably TokenRequest: its wire format, signing and MAC verification.

The MAC is ``base64(HMAC-SHA256(secret, text))`` where ``text`` is keyName,
ttl, capability, clientId, timestamp and nonce, each followed by ``\\n``. The
signer produces exactly what ably-js ``createTokenRequest`` produces; the
verifier checks the MAC over the strings as received, never re-serialising.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .capability import Capability, canonical_capability
from .clock import Clock, now_ms
from .errors import InvalidBody, InvalidClientId, InvalidCredentials, InvalidParameter

#: Wire names, in MAC order, with ``mac`` last.
FIELDS = ("keyName", "ttl", "capability", "clientId", "timestamp", "nonce", "mac")
#: Nonces shorter than this are refused by the provider (Ably requires 16).
MIN_NONCE_LENGTH = 16
#: Random bytes in a nonce the signer makes (144 bits, 24 characters).
NONCE_BYTES = 18


class InvalidTokenRequest(InvalidBody):
    """A TokenRequest with a missing field, a wrong type or a forbidden character."""

    default_message = "Invalid TokenRequest"


def _check_str(name: str, value: object, *, required: bool = True) -> None:
    if not isinstance(value, str):
        raise InvalidTokenRequest(f"TokenRequest {name} must be a string")
    if required and not value:
        raise InvalidTokenRequest(f"TokenRequest {name} must not be empty")
    if "\n" in value or "\r" in value:
        raise InvalidTokenRequest(f"TokenRequest {name} must not contain a line break")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTokenRequest(f"TokenRequest {name} is not valid Unicode text") from None


def _check_int(name: str, value: object) -> None:
    # bool is an int subclass: True must not pass as 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidTokenRequest(f"TokenRequest {name} must be an integer (milliseconds)")


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenRequest:
    """A signed Ably TokenRequest. Validated on construction."""

    key_name: str
    timestamp: int
    nonce: str
    mac: str
    ttl: int | None = None
    capability: str | None = None
    client_id: str | None = None

    def __post_init__(self) -> None:
        _check_str("keyName", self.key_name)
        _check_int("timestamp", self.timestamp)
        if self.timestamp < 0:
            raise InvalidTokenRequest("TokenRequest timestamp must not be negative")
        _check_str("nonce", self.nonce)
        _check_str("mac", self.mac)
        if self.ttl is not None:
            _check_int("ttl", self.ttl)
            if self.ttl <= 0:
                raise InvalidParameter("TokenRequest ttl must be a positive number of milliseconds")
        if self.capability is not None:
            if not isinstance(self.capability, str):
                raise InvalidTokenRequest(
                    "TokenRequest capability must be a string holding JSON, as it was signed"
                )
            try:
                self.capability.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidTokenRequest(
                    "TokenRequest capability is not valid Unicode text"
                ) from None
        if self.client_id is not None:
            if self.client_id == "":
                raise InvalidClientId("clientId must not be an empty string; omit it instead")
            _check_str("clientId", self.client_id)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenRequest:
        """Build from the wire form. ``null`` counts as absent; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise InvalidTokenRequest("TokenRequest must be a JSON object")
        unknown = [k for k in data if k not in FIELDS]
        if unknown:
            names = ", ".join(sorted(repr(k) for k in unknown))
            raise InvalidTokenRequest(
                f"TokenRequest has unknown field(s) {names}; expected only {', '.join(FIELDS)}"
            )
        missing = [k for k in ("keyName", "timestamp", "nonce", "mac") if data.get(k) is None]
        if missing:
            raise InvalidTokenRequest(f"TokenRequest is missing {', '.join(missing)}")
        return cls(
            key_name=data["keyName"],
            timestamp=data["timestamp"],
            nonce=data["nonce"],
            mac=data["mac"],
            ttl=data.get("ttl"),
            capability=data.get("capability"),
            client_id=data.get("clientId"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form: absent fields are omitted, never ``null``."""
        out: dict[str, Any] = {"keyName": self.key_name}
        if self.ttl is not None:
            out["ttl"] = self.ttl
        if self.capability is not None:
            out["capability"] = self.capability
        if self.client_id is not None:
            out["clientId"] = self.client_id
        out["timestamp"] = self.timestamp
        out["nonce"] = self.nonce
        out["mac"] = self.mac
        return out

    def to_json(self) -> str:
        """Compact JSON, non-ASCII as is (what ably-js sends)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @property
    def sign_text(self) -> str:
        return _sign_text(
            self.key_name, self.ttl, self.capability, self.client_id, self.timestamp, self.nonce
        )

    def capability_object(self) -> Capability | None:
        """The parsed capability, or ``None`` when absent."""
        return None if self.capability is None else Capability.parse(self.capability)


def _sign_text(
    key_name: str,
    ttl: int | None,
    capability: str | None,
    client_id: str | None,
    timestamp: int,
    nonce: str,
) -> str:
    return (
        f"{key_name}\n{'' if ttl is None else ttl}\n{capability or ''}\n"
        f"{client_id or ''}\n{timestamp}\n{nonce}\n"
    )


def compute_mac(text: str, secret: str) -> str:
    """``base64(HMAC-SHA256(utf8(secret), utf8(text)))`` with padding."""
    digest = hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def split_key(key: str) -> tuple[str, str]:
    """Split ``appId.keyId:secret`` into key name and secret.

    The key name is everything before the first ``:``. Raises ``ValueError``
    (without echoing the key) when there is no non-empty secret.
    """
    if not isinstance(key, str):
        raise TypeError("key must be a string like 'appId.keyId:secret'")
    key_name, sep, secret = key.partition(":")
    if not sep or not key_name or not secret:
        raise ValueError("key must look like 'appId.keyId:secret' (key name, colon, secret)")
    return key_name, secret


def new_nonce() -> str:
    """A fresh nonce: 144 random bits from :mod:`secrets`, URL-safe base64."""
    return secrets.token_urlsafe(NONCE_BYTES)


def sign_token_request(
    key: str,
    *,
    ttl: int | None = None,
    capability: str | Mapping[str, Any] | Capability | None = None,
    client_id: str | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
    now: Clock = now_ms,
) -> TokenRequest:
    """Sign a TokenRequest locally with ``key`` (``appId.keyId:secret``).

    The result is byte-identical to ably-js ``createTokenRequest`` for the same
    inputs: ``capability`` (JSON text, mapping or :class:`Capability`) is put in
    canonical form. ``timestamp`` defaults to ``now()``, ``nonce`` to 144 random
    bits. The secret never appears in the result.
    """
    key_name, secret = split_key(key)
    if client_id == "":
        raise InvalidClientId("clientId must not be an empty string; omit it instead")
    cap_text: str | None
    if capability is None:
        cap_text = None
    elif capability == "":
        cap_text = ""  # ably-js passes an empty string through unchanged
    else:
        cap_text = canonical_capability(capability)
    request = TokenRequest(
        key_name=key_name,
        ttl=ttl,
        capability=cap_text,
        client_id=client_id,
        timestamp=now() if timestamp is None else timestamp,
        nonce=new_nonce() if nonce is None else nonce,
        mac="-",
    )
    mac = compute_mac(request.sign_text, secret)
    # Rebuilding runs validation twice; object.__setattr__ avoids that on a hot path.
    object.__setattr__(request, "mac", mac)
    return request


def _strip_key_name(secret: str, key_name: str) -> str:
    """Accept a full key string where a secret is expected."""
    prefix = key_name + ":"
    return secret[len(prefix) :] if secret.startswith(prefix) else secret


def verify_mac(token_request: TokenRequest | Mapping[str, Any], secret: str) -> bool:
    """Whether the TokenRequest's MAC is right for ``secret`` (constant time).

    Checks the fields exactly as received (a spaced capability verifies).
    A malformed TokenRequest (wrong types, a line break in a field) is
    ``False``, never an exception. ``secret`` may also be the full key string.
    """
    if not isinstance(token_request, TokenRequest):
        try:
            token_request = TokenRequest.from_dict(token_request)
        except (InvalidBody, InvalidParameter, InvalidClientId):
            return False
    if not isinstance(secret, str) or not secret:
        return False
    secret = _strip_key_name(secret, token_request.key_name)
    expected = compute_mac(token_request.sign_text, secret).encode("ascii")
    try:
        given = token_request.mac.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, given)


def check_mac(token_request: TokenRequest, secret: str) -> None:
    """Like :func:`verify_mac` but raises :class:`InvalidCredentials` (40101)."""
    if not verify_mac(token_request, secret):
        raise InvalidCredentials(
            "TokenRequest MAC does not match: sign with the key's secret and send the "
            "fields exactly as signed (ttl in milliseconds, capability not re-serialised)"
        )
