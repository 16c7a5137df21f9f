"""HTTP helpers shared by the blueprints: Ably error responses, JSON, CORS.

JSON is always sent as exactly ``application/json`` (ably-js drops an error
body served with a charset) with ``Cache-Control: no-store`` (a cached
TokenRequest is a replayed nonce).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flask import Request, Response

from .errors import InvalidBody, TokenReqError

JSON = "application/json"
JWT = "application/jwt"
MSGPACK = "application/x-msgpack"


def no_store(response: Response) -> Response:
    headers = response.headers
    headers["Cache-Control"] = "no-store"
    if "Pragma" not in headers:  # headers.setdefault, without its second lookup
        headers.add("Pragma", "no-cache")
    return response


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return no_store(Response(body, status=status, mimetype=JSON))


def _header_safe(text: str) -> str:
    # Header values must be single-line latin-1; ably-js reads them verbatim.
    flat = " ".join(text.split())
    return flat.encode("latin-1", "replace").decode("latin-1")[:512]


def error_response(error: TokenReqError) -> Response:
    """The Ably error body, status and ``X-Ably-ErrorCode``/``-Message`` headers."""
    response = json_response(error.to_dict(), error.status)
    response.headers["X-Ably-ErrorCode"] = str(error.code)
    response.headers["X-Ably-ErrorMessage"] = _header_safe(error.message)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="tokenreq"'
    return response


def read_json(request: Request, *, max_bytes: int) -> Any:
    """Parse a JSON request body of at most ``max_bytes``; raises :class:`InvalidBody`."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise InvalidBody(f"request body too large: at most {max_bytes} bytes")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise InvalidBody(f"request body too large: at most {max_bytes} bytes")
    if not raw:
        raise InvalidBody("request body is empty: send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidBody("request body is not valid JSON") from None


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

    def allowed(self, request: Request) -> str | None:
        if not self.origins:
            return None  # no allow-list: nothing to look up
        origin = request.headers.get("Origin")
        return origin if origin and origin in self.origins else None

    def preflight(self, request: Request) -> Response:
        """Answer an ``OPTIONS`` preflight: 204, with CORS headers only for allowed origins."""
        response = Response(status=204)
        origin = self.allowed(request)
        if origin:
            response.headers["Access-Control-Allow-Methods"] = self.methods
            requested = request.headers.get("Access-Control-Request-Headers")
            response.headers["Access-Control-Allow-Headers"] = self.headers or (requested or "")
            response.headers["Access-Control-Max-Age"] = self.max_age
        return self.apply(request, response)

    def apply(self, request: Request, response: Response) -> Response:
        if "Vary" in response.headers:
            response.vary.add("Origin")
        else:
            response.headers["Vary"] = "Origin"  # what vary.add gives, without parsing
        origin = self.allowed(request)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = (
                "X-Ably-ErrorCode, X-Ably-ErrorMessage"
            )
        return response
