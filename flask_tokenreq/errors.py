"""Errors that carry an Ably error code and an HTTP status.

Every error the library answers with is a :class:`TokenReqError`. Its
``code`` is an Ably error code (``40104`` timestamp not current, ...) and its
``status`` the HTTP status; :meth:`TokenReqError.to_dict` gives the Ably
error body ``{"error": {"message", "code", "statusCode"}}``. Messages never
contain a secret.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TokenReqError(Exception):
    """Base class: an Ably-style error with a code, a status and a message."""

    code: ClassVar[int] = 50000
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal error"

    def __init__(
        self, message: str | None = None, *, code: int | None = None, status: int | None = None
    ) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)
        # Instance overrides keep the class defaults for ``isinstance`` checks
        # while letting one place answer, say, 40102 with 403 instead of 401.
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """The Ably error body."""
        return {"error": {"message": self.message, "code": self.code, "statusCode": self.status}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code}, status={self.status})"


class BadRequest(TokenReqError):
    code = 40000
    status = 400
    default_message = "Bad request"


class InvalidBody(BadRequest):
    """The request body is not a well-formed TokenRequest (or is too large)."""

    code = 40001
    default_message = "Invalid request body"


class InvalidParameter(BadRequest):
    """A parameter has a value outside what is allowed (ttl out of range, ...)."""

    code = 40003
    default_message = "Invalid parameter value"


class InvalidClientId(BadRequest):
    code = 40012
    default_message = "Invalid clientId"


class Unauthorized(TokenReqError):
    code = 40100
    status = 401
    default_message = "Unauthorized"


class InvalidCredentials(Unauthorized):
    """Bad MAC, unknown key, or a malformed credential."""

    code = 40101
    default_message = "Invalid credentials"


class IncompatibleClientId(Unauthorized):
    code = 40102
    default_message = "Incompatible clientId"


class TimestampNotCurrent(Unauthorized):
    code = 40104
    default_message = "Timestamp not current"


class NonceReplayed(Unauthorized):
    code = 40105
    default_message = "Nonce value replayed"


class KeyRevoked(Unauthorized):
    code = 40131
    default_message = "Key revoked"


class KeyExpired(Unauthorized):
    code = 40132
    default_message = "Key expired"


class TokenRevoked(Unauthorized):
    code = 40141
    default_message = "Token revoked"


class TokenExpired(Unauthorized):
    code = 40142
    default_message = "Token expired"


class InvalidToken(Unauthorized):
    """A token that does not verify (bad signature, claims, type, size)."""

    code = 40144
    default_message = "Invalid token"


class CapabilityNotPermitted(Unauthorized):
    code = 40160
    default_message = "Capability not permitted"


class Forbidden(TokenReqError):
    code = 40300
    status = 403
    default_message = "Forbidden"


class NotFound(TokenReqError):
    code = 40400
    status = 404
    default_message = "Not found"


class InternalError(TokenReqError):
    code = 50000
    status = 500
    default_message = "Internal error"


class StoreUnavailable(TokenReqError):
    """A backing store failed; the request is refused (fail closed)."""

    code = 50003
    status = 503
    default_message = "Store unavailable; request refused"


class ProviderUnreachable(TokenReqError):
    """The provider or authUrl could not be reached (connection, timeout, TLS)."""

    code = 50003
    status = 503
    default_message = "Token provider unreachable"


class AuthUrlError(TokenReqError):
    """The authUrl answered with something that is not a token (Ably's 40170)."""

    code = 40170
    status = 401
    default_message = "Error from authUrl"


class ConfigError(ValueError):
    """A ``TOKENREQ_*`` setting is missing or malformed. Raised by ``init_app``."""
