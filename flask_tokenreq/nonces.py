"""Deprecated alias of :mod:`flask_tokenreq.stores` (removed in the next release).

Every name this module had is still here, imported from its new home on first
access. Import from ``flask_tokenreq.stores`` (``open_nonce_store``,
``NonceStore``, ``default_nonce_store_url``) or from the backend modules
(``flask_tokenreq.stores.sql.SqlNonceStore``, ...) instead.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

warnings.warn(
    "flask_tokenreq.nonces is deprecated and will be removed in the next release; "
    "import from flask_tokenreq.stores instead",
    DeprecationWarning,
    stacklevel=2,
)

#: Old name -> "module:name" (modules relative to flask_tokenreq.stores).
_MOVED = {
    "SETTING": ".base:SETTING",
    "MAX_KEY_NAME_LENGTH": ".base:MAX_KEY_NAME_LENGTH",
    "CONNECT_TIMEOUT_S": ".base:CONNECT_TIMEOUT_S",
    "NonceStore": ".base:NonceStore",
    "redact_url": ".base:redact_url",
    "open_nonce_store": ":open_nonce_store",
    "default_nonce_store_url": ":default_nonce_store_url",
    "DEFAULT_SQLITE_FILENAME": ":DEFAULT_SQLITE_FILENAME",
    "MemoryNonceStore": ".memory:MemoryNonceStore",
    "SqlNonceStore": ".sql:SqlNonceStore",
    "nonce_metadata": ".sql:nonce_metadata",
    "nonces_table": ".sql:nonces_table",
    "STATEMENT_TIMEOUT_MS": ".sql:STATEMENT_TIMEOUT_MS",
    "SQLITE_BUSY_TIMEOUT_MS": ".sql:SQLITE_BUSY_TIMEOUT_MS",
    "RedisNonceStore": ".redis:RedisNonceStore",
    "REDIS_KEY_PREFIX": ".redis:REDIS_KEY_PREFIX",
    "SOCKET_TIMEOUT_S": ".redis:SOCKET_TIMEOUT_S",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    target = _MOVED.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module("flask_tokenreq.stores" + module_name)
    value = getattr(module, attr)
    globals()[name] = value
    return value
