"""What every nonce store shares: protocol, checks, claim key, fail-closed answer, redaction.

Imports nothing beyond the standard library and this package's errors and
clock, so ``import flask_tokenreq.stores`` loads no database driver.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import StoreUnavailable

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MAX_KEY_NAME_LENGTH",
    "SETTING",
    "NonceStore",
    "at_fork_in_child",
    "check_args",
    "claim_key",
    "describe",
    "effective_expiry",
    "logger",
    "nonce_digest",
    "redact_url",
    "unavailable",
]

logger = logging.getLogger("flask_tokenreq")

#: The setting that selects the backend; named in configuration errors.
SETTING = "TOKENREQ_NONCE_STORE"
#: Longest accepted key name (the SQL column is ``VARCHAR(255)``).
MAX_KEY_NAME_LENGTH = 255
#: Seconds to wait for a TCP connection (PostgreSQL, Redis) before failing.
CONNECT_TIMEOUT_S = 2

_SECRET_QUERY_KEYS = frozenset({"pass", "pwd"})
#: A query key containing one of these (``password``, libpq's ``sslpassword``,
#: ``client_secret``, ``access_token``) has its value redacted.
_SECRET_QUERY_WORDS = ("password", "passwd", "secret", "token")

_T = TypeVar("_T")


@runtime_checkable
class NonceStore(Protocol):
    """What the provider (and ``flask tokenreq nonces purge``) needs from a nonce store."""

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        """Claim ``(key_name, nonce)`` atomically.

        ``True`` the first time; ``False`` while an earlier claim is live (up to
        and including its ``expires_at_ms``, on the store's injected clock).
        A backend failure raises :class:`~flask_tokenreq.errors.StoreUnavailable`,
        never ``True``.
        """
        ...

    def purge(self, now: int | None = None) -> int:
        """Delete every claim expired at ``now`` (default: the injected clock); how many.

        Stores whose backend expires entries by itself (Redis) return 0.
        """
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the backend cannot be used."""
        ...

    def close(self) -> None:
        """Release connections (idempotent)."""
        ...


def redact_url(url: str) -> str:
    """``url`` with its password (and password-like query values) replaced by ``***``.

    Used in every message and log line, so a store URL never leaks a secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        if sep:
            netloc = f"{user}:***@{hostport}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_is_secret_query_key(k) for k, _ in pairs):
        query = urlencode(
            [(k, "***" if _is_secret_query_key(k) else v) for k, v in pairs], safe="*"
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret: unchanged (urlunsplit would drop an empty "//")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _is_secret_query_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in _SECRET_QUERY_KEYS or any(w in lowered for w in _SECRET_QUERY_WORDS)


def check_args(key_name: object, nonce: object, expires_at_ms: object) -> None:
    """Reject arguments of the wrong type or shape before touching a backend."""
    if not isinstance(key_name, str):
        raise TypeError(f"key_name must be a str, got {type(key_name).__name__}")
    if not isinstance(nonce, str):
        raise TypeError(f"nonce must be a str, got {type(nonce).__name__}")
    if isinstance(expires_at_ms, bool) or not isinstance(expires_at_ms, int):
        raise TypeError(f"expires_at_ms must be an int, got {type(expires_at_ms).__name__}")
    if not key_name or len(key_name) > MAX_KEY_NAME_LENGTH:
        raise ValueError(f"key_name must have 1 to {MAX_KEY_NAME_LENGTH} characters")
    if "\x00" in key_name:
        raise ValueError("key_name must not contain NUL")
    try:
        key_name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("key_name must be valid Unicode (no lone surrogates)") from None
    if not nonce:
        raise ValueError("nonce must not be empty")


def nonce_digest(nonce: str) -> bytes:
    """SHA-256 of the nonce: a fixed-size, any-character-safe storage key.

    Nonces come from clients; hashing bounds the size of what is stored and
    indexed and makes NUL, lone surrogates and ``:`` harmless.
    """
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).digest()


def claim_key(key_name: str, nonce: str, expires_at_ms: int) -> bytes:
    """What every backend's ``claim`` starts with: the arguments checked (at run
    time too), then the nonce's digest (a claim is stored under ``key_name`` and it)."""
    check_args(key_name, nonce, expires_at_ms)
    return nonce_digest(nonce)


def effective_expiry(expires_at_ms: int, now: int) -> int:
    """The claim's last live millisecond: never before ``now``.

    An expiry already in the past still blocks a second claim in the same
    millisecond.
    """
    return expires_at_ms if expires_at_ms > now else now


def describe(exc: BaseException) -> str:
    """One line for logs: the exception type and the driver's own message.

    For SQLAlchemy's wrapped DBAPI errors the driver's exception (``orig``) is
    shown without the SQL statement and its parameters.
    """
    cause = getattr(exc, "orig", None)
    text = " ".join(str(cause if isinstance(cause, BaseException) else exc).split())
    # SQLAlchemy appends the statement and "[parameters: ...]" to its own messages.
    text = text.split("[SQL:", 1)[0].split("[parameters:", 1)[0].strip()
    return f"{type(exc).__name__}: {text}"


def unavailable(backend: str, url: str, exc: BaseException) -> StoreUnavailable:
    """The one fail-closed answer to a backend failure: a log line (``url`` is the
    store's redacted URL), then a 503 (50003) naming the backend; never ``True``."""
    logger.warning("nonce store %s failed: %s", url, describe(exc))
    return StoreUnavailable(f"Nonce store unavailable ({backend} at {url}): {type(exc).__name__}")


def at_fork_in_child(obj: _T, action: Callable[[_T], None]) -> None:
    """Run ``action(obj)`` in a forked child while ``obj`` is alive.

    For gunicorn ``--preload``: connections and locks made in the master must
    not be shared with the workers.
    """
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - not POSIX
        return
    ref = weakref.ref(obj)

    def after_in_child() -> None:
        target = ref()
        if target is not None:
            action(target)

    os.register_at_fork(after_in_child=after_in_child)
