"""flask-tokenreq: Ably-compatible TokenRequests for Flask.

Sign TokenRequests locally for logged-in users (:class:`TokenIssuer`),
exchange them for short-lived tokens and guard resources with those tokens
(:class:`TokenProvider`). The secret key never crosses the network.
"""

from __future__ import annotations

from .capability import Capability, InvalidCapability, canonical_capability
from .client import TokenClient, exchange, request_token
from .errors import ConfigError, TokenReqError
from .issuer import TokenIssuer
from .keys import ApiKey, KeyStore, StaticKeyStore
from .nonces import NonceStore, open_nonce_store
from .provider import TokenProvider, current_identity
from .tokenrequest import TokenRequest, sign_token_request, verify_mac
from .tokens import Identity

__all__ = [
    "ApiKey",
    "Capability",
    "ConfigError",
    "Identity",
    "InvalidCapability",
    "KeyStore",
    "NonceStore",
    "StaticKeyStore",
    "TokenClient",
    "TokenIssuer",
    "TokenProvider",
    "TokenReqError",
    "TokenRequest",
    "canonical_capability",
    "current_identity",
    "exchange",
    "open_nonce_store",
    "request_token",
    "sign_token_request",
    "verify_mac",
]
