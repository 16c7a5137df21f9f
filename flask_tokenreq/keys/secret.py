"""The ``tkr_`` secret format of managed keys, and key ids.

A managed key's secret is ``tkr_`` + 43 characters of base64url (256 random
bits from :mod:`secrets`) + a 6-character checksum: the CRC32 of everything
before it, in base62, zero-padded. Secret scanners can match the prefix, and
a mistyped or truncated secret is refused by :func:`check_secret_format`
before any database lookup. CRC32 catches every change of a single character
(a change of up to 8 bits is a burst shorter than 32 bits), which the tests
check exhaustively with Hypothesis.

Ably SDKs treat a key's secret as an opaque string, so nothing changes on the
wire. People see a key as :func:`display` shows it:
``appId.keyId:tkr_ab…wxyz`` (the first 2 and last 4 characters of the random
part).
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import zlib

__all__ = [
    "CHECKSUM_LENGTH",
    "PREFIX",
    "RANDOM_LENGTH",
    "SECRET_LENGTH",
    "check_secret_format",
    "display",
    "format_secret",
    "hint",
    "looks_like_managed_key",
    "new_key_id",
    "new_secret",
    "valid_app_id",
]

#: What every managed secret starts with.
PREFIX = "tkr_"
#: Characters of base64url for 256 random bits (no padding).
RANDOM_LENGTH = 43
#: Base62 digits of the CRC32 checksum (62**6 > 2**32).
CHECKSUM_LENGTH = 6
#: Length of a whole secret: 53.
SECRET_LENGTH = len(PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
#: Characters of a key id (base62: about 47.6 bits; collisions are retried).
KEY_ID_LENGTH = 8

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_BASE62 = frozenset(BASE62)
#: An app id: what Ably's look like, plus ``-`` and ``_``; never ``.`` or ``:``.
_APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _base62(n: int, width: int) -> str:
    digits = []
    for _ in range(width):
        n, r = divmod(n, 62)
        digits.append(BASE62[r])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    """Base62 of the CRC32 of ``body`` (``tkr_`` + the random part), 6 characters."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def new_secret() -> str:
    """A fresh secret: ``tkr_`` + 256 random bits from :mod:`secrets` + the checksum."""
    return format_secret(secrets.token_bytes(32))


def format_secret(random_bytes: bytes) -> str:
    """The ``tkr_`` secret of 32 random bytes (for :func:`new_secret` and tests)."""
    if len(random_bytes) != 32:
        raise ValueError("a tkr_ secret holds exactly 32 random bytes")
    body = PREFIX + base64.urlsafe_b64encode(random_bytes).rstrip(b"=").decode("ascii")
    return body + _checksum(body)


def check_secret_format(secret: object) -> bool:
    """Whether ``secret`` is a well-formed ``tkr_`` secret (prefix, alphabet, length, checksum).

    Needs no database: a mistyped key is refused before any lookup. The work
    does not depend on where a mistake is, except for the alphabet scan,
    which only tells the sender about the string they sent.
    """
    if type(secret) is not str or len(secret) != SECRET_LENGTH:
        return False
    body, given = secret[:-CHECKSUM_LENGTH], secret[-CHECKSUM_LENGTH:]
    if not body.startswith(PREFIX):
        return False
    if not _BASE64URL.issuperset(body[len(PREFIX) :]) or not _BASE62.issuperset(given):
        return False
    return hmac.compare_digest(_checksum(body).encode("ascii"), given.encode("ascii"))


def hint(secret: str) -> str:
    """``tkr_ab…wxyz``: the prefix, the first 2 and the last 4 characters of the random part.

    Reveals 36 of 256 random bits: enough to tell keys apart, useless to an attacker.
    """
    random_part = secret[len(PREFIX) : len(PREFIX) + RANDOM_LENGTH]
    return f"{PREFIX}{random_part[:2]}…{random_part[-4:]}"


def display(key_name: str, secret: str) -> str:
    """How people see a key: ``appId.keyId:tkr_ab…wxyz``."""
    return f"{key_name}:{hint(secret)}"


def looks_like_managed_key(value: object) -> bool:
    """Whether ``value`` has the form ``appId.keyId:tkr_…`` (a key, not a token).

    For ``Authorization: Bearer <value>``: a bearer value of this form is a
    managed key used server to server. Only the form is checked here (no
    whitespace, a key name with a ``.``, a secret starting with ``tkr_``);
    :func:`check_secret_format` then decides whether the secret is
    well-formed, so a mistyped key is reported as a malformed key, not as an
    invalid token.
    """
    if type(value) is not str or len(value) > 512:
        return False
    key_name, sep, secret = value.partition(":")
    if not sep or not secret.startswith(PREFIX):
        return False
    app_id, dot, key_id = key_name.partition(".")
    return bool(dot and app_id and key_id) and not any(c.isspace() for c in value)


def new_key_id() -> str:
    """A random key id: 8 base62 characters (url-safe, never starts with ``-``)."""
    return "".join(secrets.choice(BASE62) for _ in range(KEY_ID_LENGTH))


def valid_app_id(app_id: object) -> bool:
    """Whether ``app_id`` can be the first half of a key name (1-64 of ``A-Za-z0-9_-``)."""
    return type(app_id) is str and _APP_ID.fullmatch(app_id) is not None
