"""HTTP helpers shared by the blueprints: JSON and msgpack bodies, bounded reads, CORS.

JSON is always sent as exactly ``application/json`` (ably-js drops a body
served with a charset) with ``Cache-Control: no-store`` (a cached
TokenRequest is a replayed nonce) and ``X-Content-Type-Options: nosniff``.
Errors render themselves (:class:`~flask_tokenreq.errors.TokenReqError`).
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterable
from typing import Any

import msgpack
from flask import Request, Response, request
from werkzeug.exceptions import MethodNotAllowed, RequestEntityTooLarge

from .errors import BodyTooLarge, InvalidBody, TokenReqError, UnsupportedMediaType, json_text

JSON = "application/json"
JWT = "application/jwt"
MSGPACK = "application/x-msgpack"
#: Methods the library's routes accept, so that :func:`allow` answers a wrong one
#: with an Ably 405 (a method no route lists is refused by routing, before the
#: blueprint's error handlers could make it an Ably error).
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def allow(req: Request, *methods: str) -> None:
    """Refuse any other method with an Ably 405 (routes take :data:`ALL_METHODS`)."""
    if req.method not in methods:
        raise MethodNotAllowed(valid_methods=[*methods, "OPTIONS"])


def no_store(response: Response) -> Response:
    """Forbid caching (a cached TokenRequest or token is a replay waiting to happen)."""
    headers = response.headers
    headers["Cache-Control"] = "no-store"
    headers.setdefault("Pragma", "no-cache")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as compact JSON, exactly ``application/json``, not cacheable."""
    return no_store(Response(json_text(data), status=status, mimetype=JSON))


def wants_msgpack(req: Request | None = None) -> bool:
    """Whether the client's ``Accept`` prefers msgpack (ably-js in Node by default)."""
    req = request if req is None else req
    accept = req.headers.get("Accept", "")
    return "msgpack" in accept and req.accept_mimetypes.best_match((JSON, MSGPACK)) == MSGPACK


def ably_response(data: Any, status: int = 200) -> Response:
    """``data`` in the format the Ably client asked for: msgpack or JSON, by ``Accept``.

    ably-js decodes a 2xx body in the format it put first in ``Accept``, so a
    view serving Ably clients answers with this. Binary message ``data``
    stays binary in msgpack; in JSON it becomes base64, with ``base64``
    appended to the message's ``encoding``, as Ably does.
    """
    if wants_msgpack():
        # msgpack strings are UTF-8: a lone surrogate is written as its escape.
        body = msgpack.packb(data, use_bin_type=True, unicode_errors="backslashreplace")
        return no_store(Response(body, status=status, mimetype=MSGPACK))
    messages = [_json_message(m) for m in data] if isinstance(data, list) else _json_message(data)
    return json_response(messages, status)


def _json_message(message: Any) -> Any:
    if not (isinstance(message, dict) and isinstance(message.get("data"), bytes)):
        return message
    encoding = message.get("encoding")
    return {
        **message,
        "data": base64.b64encode(message["data"]).decode("ascii"),
        "encoding": f"{encoding}/base64" if encoding else "base64",
    }


def read_body(req: Request, max_bytes: int, too_large: type[TokenReqError] = InvalidBody) -> bytes:
    """The raw body, at most ``max_bytes``, chunked or not; raises ``too_large`` beyond.

    Never reads more than ``max_bytes + 1`` bytes, whatever the app's own
    ``MAX_CONTENT_LENGTH``; a body the app's limit cut short is refused, not
    parsed truncated (werkzeug's streams end quietly at such a limit).
    """
    message = f"request body too large: at most {max_bytes} bytes"
    try:
        length = req.content_length
        if length is not None and length > max_bytes:
            raise too_large(message)
        stream = req.stream
        raw = stream.read(max_bytes + 1)
        if len(raw) > max_bytes or (length is None and stream.read(1)):
            raise too_large(message)
    except RequestEntityTooLarge:
        raise too_large(message) from None
    return raw


def parse_json(raw: bytes) -> Any:
    """Parse a JSON body; malformed or absurdly nested JSON is :class:`InvalidBody` (40001)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidBody("request body is not valid JSON") from None


def parse_msgpack(raw: bytes) -> Any:
    """Parse a msgpack body (string keys only); anything malformed is :class:`InvalidBody`."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception:
        raise InvalidBody("request body is not valid msgpack") from None


def ably_request_data(max_bytes: int = 64 * 1024) -> Any:
    """The current request's body, decoded as an Ably client sent it: msgpack or JSON.

    The counterpart of :func:`ably_response` for a view serving Ably clients
    (ably-js sends msgpack in Node by default, JSON in browsers). The body is
    read at most ``max_bytes`` (chunked too): beyond, 413/41300; malformed,
    400/40001; another content type, 415/41500. These errors render themselves.
    """
    mimetype = request.mimetype
    if mimetype not in (JSON, MSGPACK, ""):
        raise UnsupportedMediaType(f"send {JSON} or {MSGPACK}, not {mimetype}")
    raw = read_body(request, max_bytes, BodyTooLarge)
    if not raw:
        raise InvalidBody("request body is empty")
    return parse_msgpack(raw) if mimetype == MSGPACK else parse_json(raw)


class Cors:
    """An exact-origin CORS allow-list with credentials.

    Only origins in the list get ``Access-Control-Allow-Origin``; nothing is
    ever answered with ``*`` because credentials (cookies) are allowed.
    """

    def __init__(
        self,
        origins: Iterable[str],
        *,
        methods: Iterable[str] = ("GET", "POST", "OPTIONS"),
        headers: Iterable[str] = (),
        max_age: int = 600,
    ) -> None:
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.methods = ", ".join(methods)
        self.headers = ", ".join(headers)
        self.max_age = str(max_age)

    def __bool__(self) -> bool:
        return bool(self.origins)

    def allowed(self, req: Request) -> str | None:
        if not self.origins:
            return None
        origin = req.headers.get("Origin")
        return origin if origin and origin in self.origins else None

    def preflight(self, req: Request) -> Response:
        """Answer an ``OPTIONS`` preflight: 204, with CORS headers only for allowed origins."""
        response = Response(status=204)
        origin = self.allowed(req)
        if origin:
            response.headers["Access-Control-Allow-Methods"] = self.methods
            requested = req.headers.get("Access-Control-Request-Headers")
            response.headers["Access-Control-Allow-Headers"] = self.headers or (requested or "")
            response.headers["Access-Control-Max-Age"] = self.max_age
        return self.apply(req, response)

    def apply(self, req: Request, response: Response) -> Response:
        response.vary.add("Origin")
        origin = self.allowed(req)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = (
                "X-Ably-ErrorCode, X-Ably-ErrorMessage"
            )
        return response


def error_response(error: TokenReqError) -> Response:
    """Deprecated: raise the error instead (it renders itself); kept for one release."""
    warnings.warn(
        "flask_tokenreq.http.error_response is deprecated and will be removed in the next "
        "release; raise the error instead (a TokenReqError renders itself)",
        DeprecationWarning,
        stacklevel=2,
    )
    return error.get_response()  # type: ignore[return-value]
