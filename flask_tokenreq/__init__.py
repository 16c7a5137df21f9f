"""flask-tokenreq: Ably-compatible TokenRequests for Flask.

Sign TokenRequests locally for logged-in users (:class:`TokenIssuer`),
exchange them for short-lived tokens and guard resources with those tokens
(:class:`TokenProvider`), and let the people the app chooses manage the keys
on a page (:class:`KeyAdmin`). The secret key never crosses the network.

Names are imported on first use, so ``import flask_tokenreq`` loads no
storage driver, HTTP client or extension until the app asks for one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0.dev0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "ApiKey": ".keys",
    "Capability": ".capability",
    "ConfigError": ".errors",
    "Identity": ".tokens",
    "InvalidCapability": ".capability",
    "KeyAdmin": ".admin",
    "KeyStore": ".keys",
    "NonceStore": ".stores",
    "StaticKeyStore": ".keys",
    "TokenClient": ".client",
    "TokenIssuer": ".issuer",
    "TokenProvider": ".provider",
    "TokenReqError": ".errors",
    "TokenRequest": ".tokenrequest",
    "ably_request_data": ".http",
    "ably_response": ".http",
    "canonical_capability": ".capability",
    "current_identity": ".provider",
    "exchange": ".client",
    "open_nonce_store": ".stores",
    "parse_key": ".keys",
    "request_token": ".client",
    "sign_token_request": ".tokenrequest",
    "signals": ".signals",
    "verify_mac": ".tokenrequest",
}

__all__ = [
    "ApiKey",
    "Capability",
    "ConfigError",
    "Identity",
    "InvalidCapability",
    "KeyAdmin",
    "KeyStore",
    "NonceStore",
    "StaticKeyStore",
    "TokenClient",
    "TokenIssuer",
    "TokenProvider",
    "TokenReqError",
    "TokenRequest",
    "__version__",
    "ably_request_data",
    "ably_response",
    "canonical_capability",
    "current_identity",
    "exchange",
    "open_nonce_store",
    "parse_key",
    "request_token",
    "sign_token_request",
    "signals",
    "verify_mac",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(module_name, __name__)
    value = module if name == "signals" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from . import signals
    from .admin import KeyAdmin
    from .capability import Capability, InvalidCapability, canonical_capability
    from .client import TokenClient, exchange, request_token
    from .errors import ConfigError, TokenReqError
    from .http import ably_request_data, ably_response
    from .issuer import TokenIssuer
    from .keys import ApiKey, KeyStore, StaticKeyStore, parse_key
    from .provider import TokenProvider, current_identity
    from .stores import NonceStore, open_nonce_store
    from .tokenrequest import TokenRequest, sign_token_request, verify_mac
    from .tokens import Identity
