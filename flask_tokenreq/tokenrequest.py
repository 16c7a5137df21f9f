"""The Ably TokenRequest: its wire format, signing and MAC verification.

The MAC is ``base64(HMAC-SHA256(secret, text))`` where ``text`` is keyName,
ttl, capability, clientId, timestamp and nonce, each followed by ``\\n``. The
signer produces exactly what ably-js ``createTokenRequest`` produces; the
verifier checks the MAC over the strings as received, never re-serialising.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
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
#: Largest timestamp or ttl accepted: a signed 64-bit integer (what msgpack,
#: SQL ``BIGINT`` and Redis carry), far above any real time in milliseconds.
MAX_INTEGER = 2**63 - 1
_REQUIRED = ("keyName", "timestamp", "nonce", "mac")
_FIELD_SET = frozenset(FIELDS)


class InvalidTokenRequest(InvalidBody):
    """A TokenRequest with a missing field, a wrong type or a forbidden character."""

    default_message = "Invalid TokenRequest"


# Field types are exact (``type(v) is str``, not ``isinstance``): the MAC covers
# the text, and a subclass can format differently from what goes on the wire (a
# str- or int-based enum does) or override the checks below; bool is not an int.


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a signed text field (keyName, nonce, clientId, ...):
    ``"must not be empty"``, ``"must not contain a line break"`` (the MAC's
    separator), ``"must not contain NUL"`` (PostgreSQL cannot store it, so a
    token for such a clientId could not be revoked by it) or ``"is not valid
    Unicode text"``; ``None`` when it can."""
    if not value:
        return "must not be empty"
    if "\n" in value or "\r" in value:
        return "must not contain a line break"
    if "\x00" in value:
        return "must not contain NUL"
    if not _is_unicode(value):
        return "is not valid Unicode text"
    return None


def _is_unicode(value: str) -> bool:
    """No lone surrogate: JSON can carry one, UTF-8 cannot (so no MAC covers it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_str(name: str, value: object) -> None:
    if type(value) is not str:
        raise InvalidTokenRequest(f"TokenRequest {name} must be a string")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidTokenRequest(f"TokenRequest {name} {problem}")


def _check_int(name: str, value: object) -> None:
    if type(value) is not int:
        raise InvalidTokenRequest(f"TokenRequest {name} must be an integer (milliseconds)")


def _validate(request: TokenRequest) -> None:
    """Every check a TokenRequest passes, in this order. The only copy of them:
    ``TokenRequest(...)`` runs it, and every TokenRequest is built that way."""
    _check_str("keyName", request.key_name)
    _check_int("timestamp", request.timestamp)
    if not 0 <= request.timestamp <= MAX_INTEGER:
        raise InvalidTokenRequest(
            f"TokenRequest timestamp must be from 0 to {MAX_INTEGER} (ms since the epoch)"
        )
    _check_str("nonce", request.nonce)
    _check_str("mac", request.mac)
    if request.ttl is not None:
        _check_int("ttl", request.ttl)
        if not 0 < request.ttl <= MAX_INTEGER:
            raise InvalidParameter("TokenRequest ttl must be a positive number of milliseconds")
    if request.capability is not None:
        if type(request.capability) is not str:
            raise InvalidTokenRequest(
                "TokenRequest capability must be a string holding JSON, as it was signed"
            )
        if not _is_unicode(request.capability):
            raise InvalidTokenRequest("TokenRequest capability is not valid Unicode text")
    if request.client_id is not None:
        if request.client_id == "":
            raise InvalidClientId("clientId must not be an empty string; omit it instead")
        _check_str("clientId", request.client_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenRequest:
    """A signed Ably TokenRequest. Validated on construction (see :func:`_validate`).

    Immutable. Its ``repr`` leaves the MAC out (a repr can reach a log line).
    """

    key_name: str
    timestamp: int
    nonce: str
    mac: str = field(repr=False)
    ttl: int | None = None
    capability: str | None = None
    client_id: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenRequest:
        """Build from the wire form. ``null`` counts as absent; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise InvalidTokenRequest("TokenRequest must be a JSON object")
        unknown = data.keys() - _FIELD_SET
        if unknown:
            names = ", ".join(sorted(repr(key) for key in unknown))
            raise InvalidTokenRequest(
                f"TokenRequest has unknown field(s) {names}; expected only {', '.join(FIELDS)}"
            )
        get = data.get
        key_name, timestamp, nonce, mac = get("keyName"), get("timestamp"), get("nonce"), get("mac")
        if key_name is None or timestamp is None or nonce is None or mac is None:
            missing = [name for name in _REQUIRED if get(name) is None]
            raise InvalidTokenRequest(f"TokenRequest is missing {', '.join(missing)}")
        return cls(
            key_name=key_name,
            timestamp=timestamp,
            nonce=nonce,
            mac=mac,
            ttl=get("ttl"),
            capability=get("capability"),
            client_id=get("clientId"),
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
        """The text the MAC covers."""
        return _sign_text(
            self.key_name, self.ttl, self.capability, self.client_id, self.timestamp, self.nonce
        )

    def capability_object(self) -> Capability | None:
        """The parsed capability, or ``None`` when absent. Raises
        :class:`~flask_tokenreq.capability.InvalidCapability` (400) for malformed text."""
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
    return _mac(text.encode("utf-8"), secret).decode("ascii")


def _mac(message: bytes, secret: str) -> bytes:
    """The MAC of ``message`` under ``secret``, as base64 (ASCII bytes)."""
    return base64.b64encode(hmac.digest(secret.encode("utf-8"), message, "sha256"))


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
    bits. The secret never appears in the result. Invalid fields raise what
    :meth:`TokenRequest.from_dict` raises for them.
    """
    key_name, secret = split_key(key)
    cap_text: str | None
    if capability is None:
        cap_text = None
    elif capability == "":
        cap_text = ""  # ably-js passes an empty string through unchanged
    else:
        cap_text = canonical_capability(capability)
    if timestamp is None:
        timestamp = now()
    if nonce is None:
        nonce = new_nonce()
    try:
        text = _sign_text(key_name, ttl, cap_text, client_id, timestamp, nonce)
    except ValueError:
        # An int too long to write (Python refuses over 4,300 digits) is out of
        # range, and TokenRequest(...) below says so (400); nothing is signed.
        text = ""
    # "surrogatepass": a lone surrogate in a field must reach TokenRequest(...)
    # below, which refuses that field (400), not fail here as UnicodeEncodeError.
    mac = _mac(text.encode("utf-8", "surrogatepass"), secret).decode("ascii")
    return TokenRequest(
        key_name=key_name,
        timestamp=timestamp,
        nonce=nonce,
        mac=mac,
        ttl=ttl,
        capability=cap_text,
        client_id=client_id,
    )


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
    expected = _mac(token_request.sign_text.encode("utf-8"), secret)
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
