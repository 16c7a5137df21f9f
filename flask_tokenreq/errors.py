"""Errors that carry an Ably error code and an HTTP status, and render themselves.

Every error the library answers with is a :class:`TokenReqError`, a
:class:`werkzeug.exceptions.HTTPException` (as Flask-Limiter's
``RateLimitExceeded`` is). Raise one anywhere in a request and Flask turns it
into the response :meth:`TokenReqError.get_response` builds: the Ably error
body ``{"error": {"message", "code", "statusCode"}}``, the
``X-Ably-ErrorCode``/``X-Ably-ErrorMessage`` headers ably-js reads,
``Content-Type: application/json`` exactly and ``Cache-Control: no-store``.
No app needs an error handler of its own for them.

As in Ably's own SDKs, ``code`` is the Ably error code (``40104`` timestamp
not current, ...) and ``status`` the HTTP status. Messages never contain a
secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, overload

from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Response

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import WSGIEnvironment
    from werkzeug.sansio.response import Response as SansIOResponse
    from werkzeug.wrappers.request import Request as WSGIRequest

_log = logging.getLogger("flask_tokenreq")

#: The media type of every JSON answer (ably-js drops an error body with a charset).
JSON_MIMETYPE = "application/json"


def _header_safe(text: str) -> str:
    """A header value: one line of latin-1, at most 512 characters (ably-js reads it as is)."""
    flat = " ".join(text.split())
    return flat.encode("latin-1", "replace").decode("latin-1")[:512]


def json_text(data: Any) -> str:
    """``data`` as compact JSON with non-ASCII as is (as ably-js writes it): the one
    writer of JSON answers.

    A lone surrogate (JSON can carry one, UTF-8 cannot) would fail when the
    answer is encoded, after the view did its work: then the whole text is
    written with ``\\u`` escapes instead, which every JSON reader decodes to
    the same value.
    """
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(data, separators=(",", ":"))
    return text


class TokenReqError(HTTPException):
    """An Ably-style error: an Ably ``code``, an HTTP ``status`` and a message."""

    code: int = 50000
    status: int = 500
    default_message: ClassVar[str] = "Internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: int | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        super().__init__(description=self.message)
        #: Extra response headers (``Allow`` on a 405, ``Retry-After`` on a 429).
        self.headers = dict(headers or {})
        # Instance overrides keep the class for ``isinstance`` checks while
        # letting one place answer, say, 40102 with 403 instead of 401.
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def name(self) -> str:
        """The HTTP reason phrase of :attr:`status` (werkzeug's ``name`` reads ``code``)."""
        return HTTP_STATUS_CODES.get(self.status, "Unknown Error")

    def to_dict(self) -> dict[str, Any]:
        """The Ably error body."""
        return {"error": {"message": self.message, "code": self.code, "statusCode": self.status}}

    def get_headers(
        self,
        environ: WSGIEnvironment | None = None,
        scope: dict[str, Any] | None = None,
    ) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", JSON_MIMETYPE),
            ("Cache-Control", "no-store"),
            ("Pragma", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Ably-ErrorCode", str(self.code)),
            ("X-Ably-ErrorMessage", _header_safe(self.message)),
        ]
        if self.status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="tokenreq"'))
        headers.extend(self.headers.items())
        return headers

    def get_body(
        self,
        environ: WSGIEnvironment | None = None,
        scope: dict[str, Any] | None = None,
    ) -> str:
        return json_text(self.to_dict())

    @overload
    def get_response(
        self, environ: WSGIEnvironment | WSGIRequest | None = ..., scope: None = None
    ) -> Response: ...
    @overload
    def get_response(self, environ: None = None, scope: dict[str, Any] = ...) -> SansIOResponse: ...
    def get_response(
        self,
        environ: WSGIEnvironment | WSGIRequest | None = None,
        scope: dict[str, Any] | None = None,
    ) -> Response | SansIOResponse:
        """The Ably error response: the one place an error becomes a response."""
        return Response(self.get_body(), self.status, self.get_headers())

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code}, status={self.status})"


class BadRequest(TokenReqError):
    code = 40000
    status = 400
    default_message = "Bad request"


class InvalidBody(BadRequest):
    """The request body is not well-formed (or is too large)."""

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


class TokenAuthNotAllowed(Unauthorized):
    """An operation that needs the key itself (Basic auth), not a token (Ably's 40162)."""

    code = 40162
    default_message = "This operation requires key authentication, not a token"


class AuthUrlError(TokenReqError):
    """The authUrl answered with something that is not a token (Ably's 40170)."""

    code = 40170
    status = 401
    default_message = "Error from authUrl"


class Forbidden(TokenReqError):
    code = 40300
    status = 403
    default_message = "Forbidden"


class NotFound(TokenReqError):
    code = 40400
    status = 404
    default_message = "Not found"


class MethodNotAllowed(TokenReqError):
    code = 40500
    status = 405
    default_message = "Method not allowed"


class Conflict(TokenReqError):
    """The change conflicts with the resource's state (a static key cannot be revoked)."""

    code = 40900
    status = 409
    default_message = "Conflict"


class BodyTooLarge(TokenReqError):
    code = 41300
    status = 413
    default_message = "Request body too large"


class UnsupportedMediaType(TokenReqError):
    code = 41500
    status = 415
    default_message = "Unsupported media type"


class TooManyRequests(TokenReqError):
    code = 42900
    status = 429
    default_message = "Too many requests"


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


#: Ably code -> the class a client raises for it (see :func:`error_for_code`).
#: Where two classes share a code, the table names the one a client means.
ERRORS_BY_CODE: dict[int, type[TokenReqError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        InvalidBody,
        InvalidParameter,
        InvalidClientId,
        Unauthorized,
        InvalidCredentials,
        IncompatibleClientId,
        TimestampNotCurrent,
        NonceReplayed,
        KeyRevoked,
        KeyExpired,
        TokenRevoked,
        TokenExpired,
        InvalidToken,
        CapabilityNotPermitted,
        TokenAuthNotAllowed,
        AuthUrlError,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        BodyTooLarge,
        UnsupportedMediaType,
        TooManyRequests,
        InternalError,
        StoreUnavailable,
    )
}


def error_for_code(code: int, status: int, message: str) -> TokenReqError:
    """The :class:`TokenReqError` subclass for an Ably ``code`` (the base class when unknown)."""
    cls = ERRORS_BY_CODE.get(code, TokenReqError)
    return cls(message, code=code, status=status)


def from_http_exception(exc: HTTPException) -> TokenReqError:
    """A werkzeug HTTP error (404, 405, 413, ...) as an Ably error; code = status x 100."""
    if isinstance(exc, TokenReqError):
        return exc
    status = exc.code or 500
    messages = {
        404: "Not found",
        405: "Method not allowed",
        413: "Request body too large",
    }
    message = messages.get(status) or exc.description or exc.name
    error = error_for_code(status * 100, status, message)
    valid_methods = getattr(exc, "valid_methods", None)
    if status == 405 and valid_methods:
        error.headers["Allow"] = ", ".join(valid_methods)
    return error


class _Scope(Protocol):
    def register_error_handler(self, code_or_exception: Any, f: Any) -> None: ...


def ably_errors(scope: _Scope) -> None:
    """Answer every error under ``scope`` (a Flask app or blueprint) as an Ably error.

    :class:`TokenReqError` renders itself anywhere; this adds werkzeug's own
    HTTP errors (404, 405, 413, ...) as ``code = status x 100`` and turns any
    other exception into a logged 500 (50000) whose body says nothing more,
    so a client never sees an HTML page or a traceback. The issuer and
    provider blueprints use it; call it on your own resource blueprints.

    A catch-all ``@app.errorhandler(HTTPException)`` of your own also receives
    :class:`TokenReqError`: its ``code`` is the Ably code and ``status`` the
    HTTP status, so let it answer ``error.get_response()``.
    """
    scope.register_error_handler(HTTPException, _render_http_error)
    scope.register_error_handler(Exception, _render_unexpected_error)


def _render_http_error(exc: HTTPException) -> Response:
    error = from_http_exception(exc)
    if error.status >= 500:
        _log.error("error %d: %s", error.code, error.message)
    return error.get_response()


def _render_unexpected_error(exc: Exception) -> Response:
    _log.error("unexpected error", exc_info=exc)
    return InternalError().get_response()


class ConfigError(ValueError):
    """A ``TOKENREQ_*`` setting is missing or malformed. Raised by ``init_app``."""
