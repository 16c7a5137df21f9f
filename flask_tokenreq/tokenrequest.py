"""The Ably TokenRequest: its wire format, signing and MAC verification.

The MAC is ``base64(HMAC-SHA256(secret, text))`` where ``text`` is keyName,
ttl, capability, clientId, timestamp and nonce, each followed by ``\\n``. The
signer produces exactly what ably-js ``createTokenRequest`` produces; the
verifier checks the MAC over the strings as received, never re-serialising.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import secrets
import threading
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
_FIELD_SET = frozenset(FIELDS)


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
    if value.isascii():  # ASCII always encodes: skip the copy below
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTokenRequest(f"TokenRequest {name} is not valid Unicode text") from None


def _check_int(name: str, value: object) -> None:
    # bool is an int subclass: True must not pass as 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidTokenRequest(f"TokenRequest {name} must be an integer (milliseconds)")


def _validate(
    key_name: object,
    timestamp: object,
    nonce: object,
    mac: object,
    ttl: object,
    capability: object,
    client_id: object,
) -> None:
    """The checks every TokenRequest passes, in this order (see ``__post_init__``)."""
    # The common case first, cheaply: plain ASCII strings without line breaks
    # and positive ints pass every check below.
    if (
        type(key_name) is str
        and type(nonce) is str
        and type(mac) is str
        and type(timestamp) is int
        and timestamp >= 0
        and (ttl is None or (type(ttl) is int and ttl > 0))
        and (capability is None or (type(capability) is str and capability.isascii()))
        and (client_id is None or (type(client_id) is str and client_id != ""))
        and key_name != ""
        and nonce != ""
        and mac != ""
    ):
        text = key_name + nonce + mac + (client_id or "")
        if text.isascii() and "\n" not in text and "\r" not in text:
            return
    _check_str("keyName", key_name)
    _check_int("timestamp", timestamp)
    if timestamp < 0:  # type: ignore[operator]
        raise InvalidTokenRequest("TokenRequest timestamp must not be negative")
    _check_str("nonce", nonce)
    _check_str("mac", mac)
    if ttl is not None:
        _check_int("ttl", ttl)
        if ttl <= 0:  # type: ignore[operator]
            raise InvalidParameter("TokenRequest ttl must be a positive number of milliseconds")
    if capability is not None:
        if not isinstance(capability, str):
            raise InvalidTokenRequest(
                "TokenRequest capability must be a string holding JSON, as it was signed"
            )
        try:
            capability.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidTokenRequest("TokenRequest capability is not valid Unicode text") from None
    if client_id is not None:
        if client_id == "":
            raise InvalidClientId("clientId must not be an empty string; omit it instead")
        _check_str("clientId", client_id)


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
        _validate(
            self.key_name,
            self.timestamp,
            self.nonce,
            self.mac,
            self.ttl,
            self.capability,
            self.client_id,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenRequest:
        """Build from the wire form. ``null`` counts as absent; unknown keys are refused."""
        if type(data) is not dict and not isinstance(data, Mapping):  # dict: skip the ABC check
            raise InvalidTokenRequest("TokenRequest must be a JSON object")
        if type(data) is not dict or not data.keys() <= _FIELD_SET:
            unknown = [k for k in data if k not in FIELDS]
            if unknown:
                names = ", ".join(sorted(repr(k) for k in unknown))
                raise InvalidTokenRequest(
                    f"TokenRequest has unknown field(s) {names}; expected only {', '.join(FIELDS)}"
                )
        get = data.get
        key_name = get("keyName")
        timestamp = get("timestamp")
        nonce = get("nonce")
        mac = get("mac")
        if key_name is None or timestamp is None or nonce is None or mac is None:
            missing = [k for k in ("keyName", "timestamp", "nonce", "mac") if data.get(k) is None]
            raise InvalidTokenRequest(f"TokenRequest is missing {', '.join(missing)}")
        ttl = get("ttl")
        capability = get("capability")
        client_id = get("clientId")
        if cls is not TokenRequest:
            return cls(
                key_name=key_name,
                timestamp=timestamp,
                nonce=nonce,
                mac=mac,
                ttl=ttl,
                capability=capability,
                client_id=client_id,
            )
        # What the dataclass __init__ does (the same checks), without its overhead.
        _validate(key_name, timestamp, nonce, mac, ttl, capability, client_id)
        request: TokenRequest = _new_object(cls)
        _set_key_name(request, key_name)
        _set_timestamp(request, timestamp)
        _set_nonce(request, nonce)
        _set_mac(request, mac)
        _set_ttl(request, ttl)
        _set_capability(request, capability)
        _set_client_id(request, client_id)
        return request

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
    return _mac_base64(text, secret).decode("ascii")


def _mac_base64(text: str, secret: str) -> bytes:
    """:func:`compute_mac` as ASCII bytes."""
    return _b2a_base64(_hmac_sha256(_hmac_pads(secret), text.encode()), newline=False)


_b2a_base64 = binascii.b2a_base64
#: A keyed HMAC-SHA256 object, never updated itself: each MAC works on a copy.
_Pads = hmac.HMAC


def _make_pads(key: bytes) -> _Pads:
    """HMAC-SHA256 keyed with ``key``, to be copied for each MAC.

    Keying hashes the inner and outer key blocks (RFC 2104); they depend on
    the key only, so :func:`_hmac_sha256` copies this object instead of keying
    a new one per MAC (OpenSSL 3 makes ``hmac.new``/``hmac.digest`` set up a
    fresh context on every call).
    """
    return hmac.new(key, digestmod=hashlib.sha256)


def _hmac_sha256(pads: _Pads, message: bytes) -> bytes:
    """HMAC-SHA256 of ``message`` under the key ``pads`` was made with."""
    mac = pads.copy()
    mac.update(message)
    return mac.digest()


@functools.lru_cache(maxsize=64)
def _hmac_pads(secret: str) -> _Pads:
    """:func:`_make_pads` of a key secret (UTF-8). The cache holds keyed HMAC
    objects for at most 64 secrets, in this process only."""
    return _make_pads(secret.encode("utf-8"))


@functools.lru_cache(maxsize=64)
def _hmac_key_pads(key: bytes) -> _Pads:
    """:func:`_make_pads` of raw key bytes (cached like :func:`_hmac_pads`)."""
    return _make_pads(key)


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
    # The form of secrets.token_urlsafe(18) (18 bytes need no padding).
    return base64.urlsafe_b64encode(random_bytes(NONCE_BYTES)).decode("ascii")


#: Bytes drawn from secrets.token_bytes at a time by random_bytes().
RANDOM_BLOCK_BYTES = 1024


class _RandomBlocks:
    """Random bytes from :func:`secrets.token_bytes`, drawn a block at a time.

    Each byte is handed out once. Why: ``os.urandom`` releases the GIL, so in
    a threaded server (gunicorn gthread) every call hands the interpreter to
    another thread and waits to get it back (about 1 ms, and several times
    the call's own CPU time). One call per block instead of one per token.
    A forked child starts with an empty block (nothing drawn in the parent is
    ever reused).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._used = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            start = self._used
            if start + n > len(self._block):
                self._block = secrets.token_bytes(max(RANDOM_BLOCK_BYTES, n))
                start = 0
            self._used = start + n
            return self._block[start : start + n]

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._used = 0


_random_blocks = _RandomBlocks()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_blocks._reset)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from :func:`secrets.token_bytes` (see :class:`_RandomBlocks`)."""
    return _random_blocks.take(n)


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
    if timestamp is None:
        timestamp = now()
    # The checks TokenRequest(...) makes, in the same order, minus those that
    # cannot fail here: a nonce we made, the MAC, a canonical capability text.
    _check_str("keyName", key_name)
    _check_int("timestamp", timestamp)
    if timestamp < 0:
        raise InvalidTokenRequest("TokenRequest timestamp must not be negative")
    if nonce is None:
        nonce = new_nonce()
    else:
        _check_str("nonce", nonce)
    if ttl is not None:
        _check_int("ttl", ttl)
        if ttl <= 0:
            raise InvalidParameter("TokenRequest ttl must be a positive number of milliseconds")
    if client_id is not None:
        _check_str("clientId", client_id)
    mac = compute_mac(_sign_text(key_name, ttl, cap_text, client_id, timestamp, nonce), secret)
    # Built without running the same checks again: this is the signer's hot path.
    request: TokenRequest = _new_object(TokenRequest)
    _set_key_name(request, key_name)
    _set_timestamp(request, timestamp)
    _set_nonce(request, nonce)
    _set_mac(request, mac)
    _set_ttl(request, ttl)
    _set_capability(request, cap_text)
    _set_client_id(request, client_id)
    return request


_new_object = object.__new__
# The slots' own setters (what a frozen dataclass's __init__ ends up calling).
_set_key_name = TokenRequest.__dict__["key_name"].__set__
_set_timestamp = TokenRequest.__dict__["timestamp"].__set__
_set_nonce = TokenRequest.__dict__["nonce"].__set__
_set_mac = TokenRequest.__dict__["mac"].__set__
_set_ttl = TokenRequest.__dict__["ttl"].__set__
_set_capability = TokenRequest.__dict__["capability"].__set__
_set_client_id = TokenRequest.__dict__["client_id"].__set__


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
    tr = token_request
    if ":" in secret:  # else it cannot start with "<keyName>:"
        secret = _strip_key_name(secret, tr.key_name)
    expected = _mac_base64(
        _sign_text(tr.key_name, tr.ttl, tr.capability, tr.client_id, tr.timestamp, tr.nonce), secret
    )
    try:
        given = tr.mac.encode("ascii")
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
