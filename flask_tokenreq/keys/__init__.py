"""API keys: what the provider knows about each key and where keys come from.

- :mod:`.base`: :class:`ApiKey`, the :class:`KeyStore` protocol, :func:`parse_key`;
- :mod:`.static`: keys fixed in configuration (``TOKENREQ_PROVIDER_KEYS``);
- :mod:`.secret`: the ``tkr_`` secret format of managed keys;
- :mod:`.sql`: managed keys in SQL (:class:`~.sql.SqlKeyStore`; imports SQLAlchemy,
  so it is not imported here).
"""

from __future__ import annotations

from .base import ApiKey, GraceSecret, KeyStatus, KeyStore, configured_key, parse_key
from .static import StaticKeyStore

__all__ = [
    "ApiKey",
    "GraceSecret",
    "KeyStatus",
    "KeyStore",
    "StaticKeyStore",
    "configured_key",
    "parse_key",
]
