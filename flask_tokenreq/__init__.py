"""flask-tokenreq: Ably-compatible TokenRequests for Flask.

Sign TokenRequests locally for logged-in users (:class:`TokenIssuer`),
exchange them for short-lived tokens and guard resources with those tokens
(:class:`TokenProvider`). The secret key never crosses the network.
"""

from __future__ import annotations

from .capability import Capability, InvalidCapability, canonical_capability
from .errors import ConfigError, TokenReqError
from .tokenrequest import TokenRequest, sign_token_request, verify_mac

__all__ = [
    "Capability",
    "ConfigError",
    "InvalidCapability",
    "TokenReqError",
    "TokenRequest",
    "canonical_capability",
    "sign_token_request",
    "verify_mac",
]
