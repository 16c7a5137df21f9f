"""Nonce stores: remember each TokenRequest nonce so it is accepted once.

The provider claims a TokenRequest's nonce after its MAC verified. A
:class:`NonceStore` answers ``True`` the first time ``(key_name, nonce)`` is
claimed and ``False`` while that claim is live, i.e. up to and including its
``expires_at_ms``; afterwards the pair may be claimed again. The check and the
write are one atomic step in every backend, and every backend failure raises
:class:`~flask_tokenreq.errors.StoreUnavailable`, so a broken store refuses
requests instead of accepting replays.

The backend is chosen by the scheme of the ``TOKENREQ_NONCE_STORE`` URL
through :data:`SCHEMES` (see ``docs/nonces.md``). A backend's module, and its
driver, are imported when a store of that kind is first opened: importing
this package loads neither SQLAlchemy nor redis-py nor psycopg.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from ..clock import Clock, now_ms
from ..errors import ConfigError
from .base import SETTING, NonceStore, redact_url

if TYPE_CHECKING:  # pragma: no cover - for type checkers
    from .memory import MemoryNonceStore
    from .redis import RedisNonceStore
    from .sql import SqlNonceStore

__all__ = [
    "DEFAULT_SQLITE_FILENAME",
    "SCHEMES",
    "SETTING",
    "Backend",
    "MemoryNonceStore",
    "NonceStore",
    "RedisNonceStore",
    "SqlNonceStore",
    "default_nonce_store_url",
    "open_nonce_store",
    "redact_url",
]

#: File name of the default SQLite store inside the app's instance folder.
DEFAULT_SQLITE_FILENAME = "tokenreq-nonces.sqlite3"


class Backend(NamedTuple):
    """Where a scheme's store class lives, and the extra that installs its driver."""

    target: str  #: ``"module:Class"``, the module relative to this package
    extra: str | None = None  #: ``pip install 'flask-tokenreq[extra]'``


_MEMORY = Backend(".memory:MemoryNonceStore")
_REDIS = Backend(".redis:RedisNonceStore", "redis")
_SQL = Backend(".sql:SqlNonceStore")

#: URL scheme -> backend. The part of a scheme before ``+`` is looked up
#: (``postgresql+psycopg`` -> ``postgresql``). A scheme not listed here is
#: handed to SQLAlchemy, whose dialect registry accepts or refuses it.
SCHEMES: dict[str, Backend] = {
    "memory": _MEMORY,
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "sqlite": _SQL,
    "postgresql": _SQL,
    "postgres": _SQL,
}


def _store_class(backend: Backend) -> Any:
    """Import the backend's module (and so its driver) on first use."""
    module_name, _, class_name = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as exc:
        if backend.extra is None or exc.name is None or exc.name.startswith(__name__):
            raise  # not a missing driver
        raise ConfigError(
            f"{SETTING} needs the {exc.name} package, which is not installed: "
            f"pip install 'flask-tokenreq[{backend.extra}]'"
        ) from None
    return getattr(module, class_name)


def open_nonce_store(
    url: str, *, now_ms: Clock = now_ms, instance_path: str | None = None
) -> NonceStore:
    """The store for a ``TOKENREQ_NONCE_STORE`` URL.

    ``memory://``, ``redis://``/``rediss://``/``unix://``, else any SQLAlchemy
    URL (``postgresql://`` and ``postgres://`` use psycopg 3). A relative SQLite
    path is placed inside ``instance_path`` when given. An unknown scheme or
    malformed URL raises :class:`~flask_tokenreq.errors.ConfigError`. A store
    that is down is not an error here: its claims raise ``StoreUnavailable``
    until it is back.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{SETTING} must be a non-empty URL string")
    url = url.strip()
    scheme = url.partition(":")[0].lower()
    backend = SCHEMES.get(scheme.partition("+")[0])
    if backend is None:
        if "://" not in url:
            raise ConfigError(
                f"{SETTING} must be a URL such as memory://, sqlite:///path, "
                f"postgresql://... or redis://..., got {redact_url(url)!r}"
            )
        backend = _SQL
    store: NonceStore = _store_class(backend).from_url(
        url, now_ms=now_ms, instance_path=instance_path
    )
    return store


def default_nonce_store_url(instance_path: str) -> str:
    """``sqlite:///<instance_path>/tokenreq-nonces.sqlite3``, creating the folder.

    The default store: one file shared by every worker process on the host.
    """
    folder = os.path.abspath(instance_path)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, DEFAULT_SQLITE_FILENAME)
    return "sqlite:///" + quote(path, safe="/:\\")


_CLASSES = {
    "MemoryNonceStore": _MEMORY,
    "RedisNonceStore": _REDIS,
    "SqlNonceStore": _SQL,
}


def __getattr__(name: str) -> Any:
    """The store classes, imported on first access (``stores.SqlNonceStore``)."""
    backend = _CLASSES.get(name)
    if backend is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _store_class(backend)
