"""A small synchronous client: exchange TokenRequests, fetch and cache tokens.

- :func:`exchange` posts a signed TokenRequest to a provider's
  ``/keys/<keyName>/requestToken`` and returns the TokenDetails.
- :func:`request_token` signs locally with a key, then exchanges (the
  synchronous counterpart of ably-python's ``auth.request_token``).
- :class:`TokenClient` gets tokens from an ``authUrl`` the way ably-js does
  (TokenRequest, TokenDetails, JWT or plain token, chosen by Content-Type),
  caches them until shortly before they expire, and gives a
  :mod:`requests` auth (``client.auth``) that sends
  ``Authorization: Bearer <base64(token)>`` and renews once on a 4014x 401.

Every failure is a :class:`~flask_tokenreq.errors.TokenReqError` carrying an
Ably code and HTTP status; network failures are
:class:`ProviderUnreachable` (50003/503). Messages never carry a secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.cookies import extract_cookies_to_jar

from .capability import Capability
from .clock import Clock, now_ms
from .errors import AuthUrlError, ProviderUnreachable, TokenReqError, error_for_code
from .tokenrequest import TokenRequest, sign_token_request

__all__ = [
    "AuthUrlError",
    "ProviderUnreachable",
    "TokenAuth",
    "TokenClient",
    "exchange",
    "request_token",
]

#: The ``Accept`` header ably-js sends to an authUrl (plus JWT, which it also takes).
AUTH_URL_ACCEPT = "application/json, application/jwt, text/plain"
#: Token errors on which a client renews its token once and retries (as Ably SDKs do).
RENEWABLE_CODES = range(40140, 40150)
_USER_AGENT = "flask-tokenreq-client"


def make_error(code: int, status: int, message: str) -> TokenReqError:
    """The :class:`TokenReqError` subclass for ``code`` (the base when unknown)."""
    return error_for_code(code, status, message)


def _safe_url(url: str) -> str:
    """``url`` without user info, query or fragment, fit for an error message."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid URL>"


def _unreachable(url: str, exc: BaseException) -> ProviderUnreachable:
    return ProviderUnreachable(f"could not reach {_safe_url(url)} ({type(exc).__name__})")


def error_from_response(response: requests.Response, what: str = "provider") -> TokenReqError:
    """The Ably error an HTTP error response carries.

    Reads the ``{"error": {"message", "code", "statusCode"}}`` body, else the
    ``X-Ably-ErrorCode``/``X-Ably-ErrorMessage`` headers, else the status.
    """
    status = response.status_code
    code: int | None = None
    message: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            raw_code, raw_message = err.get("code"), err.get("message")
            if isinstance(raw_code, int) and not isinstance(raw_code, bool):
                code = raw_code
            if isinstance(raw_message, str):
                message = raw_message
        elif isinstance(err, str):
            message = err
    if code is None:
        code = _header_code(response)
    if message is None:
        message = response.headers.get("X-Ably-ErrorMessage")
    if code is None:
        code = status * 100 if 400 <= status < 600 else 50000
    if not 400 <= status < 600:
        status = 500
    if not message:
        message = f"{what} answered HTTP {response.status_code}"
    return make_error(code, status, message[:1000])


def _header_code(response: requests.Response) -> int | None:
    """The ``X-Ably-ErrorCode`` header as a number, or ``None`` (absent or not
    ASCII digits: ``"²".isdigit()`` is true, but ``int("²")`` fails)."""
    header = response.headers.get("X-Ably-ErrorCode", "")
    return int(header) if header.isascii() and header.isdigit() else None


def _check_token_details(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data["token"]:
        raise TokenReqError(
            f"{what} did not return TokenDetails (a JSON object with a token)",
            code=50000,
            status=502,
        )
    for name in ("issued", "expires"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise TokenReqError(
                f"{what} returned TokenDetails with a non-integer {name}", code=50000, status=502
            )
    return data


def exchange(
    token_request: TokenRequest | Mapping[str, Any],
    provider_url: str,
    *,
    session: requests.Session | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Exchange a signed TokenRequest for TokenDetails at ``provider_url``.

    POSTs the TokenRequest JSON to ``<provider_url>/keys/<keyName>/requestToken``.
    A mapping is validated first (``null`` counts as absent, so ably-python's
    form is fine) and sent without its ``null`` fields; field values, including
    the capability text, are sent exactly as signed. Returns the provider's
    TokenDetails ``{token, keyName, issued, expires, capability, clientId}``.

    Raises a :class:`TokenReqError` subclass chosen by the provider's error code
    (``NonceReplayed`` for 40105, ...), or :class:`ProviderUnreachable`.
    """
    if not isinstance(token_request, TokenRequest):
        token_request = TokenRequest.from_dict(token_request)
    url = f"{provider_url.rstrip('/')}/keys/{quote(token_request.key_name, safe='')}/requestToken"
    http = session if session is not None else requests
    try:
        response = http.post(
            url,
            data=token_request.to_json().encode("utf-8"),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise _unreachable(url, exc) from None
    if not 200 <= response.status_code < 300:
        raise error_from_response(response, "token provider")
    try:
        data = response.json()
    except ValueError:
        data = None
    return _check_token_details(data, "token provider")


def request_token(
    key: str,
    provider_url: str,
    *,
    session: requests.Session | None = None,
    timeout: float = 10.0,
    ttl: int | None = None,
    capability: str | Mapping[str, Any] | Capability | None = None,
    client_id: str | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """Sign a TokenRequest locally with ``key`` and exchange it; returns TokenDetails.

    Only the signed TokenRequest travels; the secret stays in this process.
    """
    signed = sign_token_request(
        key, ttl=ttl, capability=capability, client_id=client_id, timestamp=timestamp, nonce=nonce
    )
    return exchange(signed, provider_url, session=session, timeout=timeout)


def _b64url_json(segment: str) -> Any:
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return json.loads(raw)


def jwt_times(token: str) -> tuple[int | None, int | None]:
    """``(issued, expires)`` in ms from a JWT's ``iat``/``exp``, unverified.

    ``(None, None)`` when ``token`` is not a decodable JWT. Used only to know
    when to renew; the provider is what verifies the token.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None, None
    try:
        claims = _b64url_json(parts[1])
    except (ValueError, binascii.Error):
        return None, None
    if not isinstance(claims, dict):
        return None, None

    def ms(name: str) -> int | None:
        value = claims.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        millis = value * 1000
        if isinstance(millis, float) and not math.isfinite(millis):
            return None  # inf, NaN or too large: no time to renew by
        return int(millis)

    return ms("iat"), ms("exp")


def _details_from_string(token: str) -> dict[str, Any]:
    token = token.strip()
    if not token:
        raise AuthUrlError("authUrl returned an empty token")
    issued, expires = jwt_times(token)
    return {"token": token, "issued": issued, "expires": expires}


class TokenClient:
    """Tokens from an ``authUrl``, cached and renewed; thread-safe.

    ``auth_url`` may answer (by Content-Type, as ably-js reads it):

    - ``application/json`` object with ``issued``: TokenDetails, used as is;
    - ``application/json`` object with ``keyName`` (and no ``issued``): a
      TokenRequest, exchanged at ``provider_url``;
    - ``application/jwt`` or ``text/plain``: a token string (a JWT's ``exp`` gives
      its expiry; otherwise the expiry is unknown and the token is used until a
      server refuses it with 40140-40149).

    Anything else is :class:`AuthUrlError` (40170). The token is cached until
    ``margin_ms`` before ``expires`` (at most half its lifetime), by the clock
    ``now_ms``. Concurrent callers share one refresh.

    ``session`` (a :class:`requests.Session`, e.g. holding the authUrl's login
    cookie) is used for the authUrl and for the exchange.
    """

    def __init__(
        self,
        auth_url: str,
        provider_url: str | None = None,
        session: requests.Session | None = None,
        *,
        auth_params: Mapping[str, str] | None = None,
        auth_method: str = "GET",
        auth_headers: Mapping[str, str] | None = None,
        margin_ms: int = 15_000,
        now_ms: Clock = now_ms,
        timeout: float = 10.0,
    ) -> None:
        method = auth_method.upper()
        if method not in ("GET", "POST"):
            raise ValueError("auth_method must be 'GET' or 'POST'")
        if margin_ms < 0:
            raise ValueError("margin_ms must not be negative")
        self.auth_url = auth_url
        self.provider_url = provider_url
        self.session = session if session is not None else requests.Session()
        self.auth_params = dict(auth_params or {})
        self.auth_method = method
        self.auth_headers = dict(auth_headers or {})
        self.margin_ms = margin_ms
        self.now_ms = now_ms
        self.timeout = timeout
        self.auth = TokenAuth(self)
        self._cond = threading.Condition()
        self._details: dict[str, Any] | None = None
        self._refreshing = False
        self._generation = 0
        self._error: TokenReqError | None = None  # outcome of the latest refresh
        self._last: dict[str, Any] | None = None

    # -- cache ---------------------------------------------------------------

    def _fresh(self, details: Mapping[str, Any]) -> bool:
        expires = details.get("expires")
        if expires is None:
            return True
        margin = self.margin_ms
        issued = details.get("issued")
        if issued is not None and expires > issued:
            margin = min(margin, (expires - issued) // 2)
        return bool(self.now_ms() < expires - margin)

    def token_details(self) -> dict[str, Any]:
        """The current TokenDetails (a copy), fetching a new token when needed.

        When another thread is already fetching, waits for its result (or its
        error) instead of fetching again.
        """
        with self._cond:
            details = self._details
            if details is not None and self._fresh(details):
                return dict(details)
            if self._refreshing:
                generation = self._generation
                self._cond.wait_for(lambda: self._generation != generation)
                # The outcome of the refresh we waited for (or a later one); not
                # self._details, which an invalidate() may have cleared since.
                if self._error is not None:
                    err = self._error
                    raise type(err)(err.message, code=err.code, status=err.status)
                assert self._last is not None
                return dict(self._last)
            self._refreshing = True
        try:
            details = self._fetch()
        except BaseException as exc:
            with self._cond:
                self._refreshing = False
                self._error = (
                    exc
                    if isinstance(exc, TokenReqError)
                    else TokenReqError("token refresh failed", code=50000, status=500)
                )
                self._generation += 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._details = self._last = details
            self._error = None
            self._refreshing = False
            self._generation += 1
            self._cond.notify_all()
        return dict(details)

    def token(self) -> str:
        """The current token string."""
        token: str = self.token_details()["token"]
        return token

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token, so the next call fetches a new one.

        With ``token``, forget it only if it is still the cached one (so many
        requests refused with the same token cause one renewal, not many).
        """
        with self._cond:
            if self._details is not None and (token is None or self._details["token"] == token):
                self._details = None

    # -- fetching ------------------------------------------------------------

    def _fetch(self) -> dict[str, Any]:
        headers = {"Accept": AUTH_URL_ACCEPT, "User-Agent": _USER_AGENT, **self.auth_headers}
        try:
            if self.auth_method == "GET":
                response = self.session.get(
                    self.auth_url, params=self.auth_params, headers=headers, timeout=self.timeout
                )
            else:
                response = self.session.post(
                    self.auth_url, data=self.auth_params, headers=headers, timeout=self.timeout
                )
        except requests.RequestException as exc:
            raise _unreachable(self.auth_url, exc) from None
        if not 200 <= response.status_code < 300:
            raise error_from_response(response, "authUrl")
        mimetype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if mimetype == "application/json":
            return self._from_json(response)
        if mimetype in ("application/jwt", "text/plain"):
            text = response.text
            if text.lstrip().startswith(("{", "[", '"')):
                raise AuthUrlError("authUrl sent JSON as text/plain; serve it as application/json")
            return _details_from_string(text)
        raise AuthUrlError(
            f"authUrl answered with Content-Type {mimetype or '(none)'!r}; expected "
            "application/json, application/jwt or text/plain"
        )

    def _from_json(self, response: requests.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise AuthUrlError("authUrl sent invalid JSON") from None
        # As ably-js: ``issued`` marks TokenDetails (which also carry keyName).
        if isinstance(data, dict) and "issued" in data:
            return _check_token_details(dict(data), "authUrl")
        if isinstance(data, dict) and "keyName" in data:
            if self.provider_url is None:
                raise AuthUrlError(
                    "authUrl returned a TokenRequest but TokenClient has no provider_url "
                    "to exchange it at"
                )
            return exchange(data, self.provider_url, session=self.session, timeout=self.timeout)
        raise AuthUrlError(
            "authUrl JSON is neither a TokenRequest (keyName) nor TokenDetails (issued)"
        )


def bearer(token: str) -> str:
    """The ``Authorization`` value Ably SDKs send: ``Bearer <base64(token)>``."""
    return "Bearer " + base64.b64encode(token.encode("utf-8")).decode("ascii")


class TokenAuth(requests.auth.AuthBase):
    """:mod:`requests` auth adding a TokenClient's token; renews once on 40140-40149.

    Use as ``session.get(url, auth=client.auth)``. A 401 whose
    ``X-Ably-ErrorCode`` is 40140-40149 (token expired, revoked, ...) makes it
    drop the token, fetch a new one and resend the request once.
    """

    def __init__(self, client: TokenClient) -> None:
        self.client = client

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.client.token()
        r.headers["Authorization"] = bearer(token)
        position: int | None = None
        body: Any = r.body
        if hasattr(body, "tell"):
            try:
                position = body.tell()
            except OSError:
                position = None
        r.register_hook("response", self._hook(token, position))  # type: ignore[no-untyped-call]
        return r

    def _hook(self, token: str, position: int | None) -> Callable[..., requests.Response]:
        retried = False

        def handle_401(response: requests.Response, **kwargs: Any) -> requests.Response:
            nonlocal retried
            if retried or response.status_code != 401:
                return response
            if _header_code(response) not in RENEWABLE_CODES:
                return response
            retried = True
            body: Any = response.request.body
            if hasattr(body, "seek"):
                if position is None:
                    return response
                body.seek(position)
            self.client.invalidate(token)
            new_token = self.client.token()
            response.content  # noqa: B018 - read the body so the connection is released
            response.close()
            request = response.request.copy()
            cookies = getattr(request, "_cookies", None)
            if cookies is not None:
                extract_cookies_to_jar(cookies, response.request, response.raw)  # type: ignore[no-untyped-call]
                request.prepare_cookies(cookies)
            request.headers["Authorization"] = bearer(new_token)
            retry: requests.Response = response.connection.send(request, **kwargs)
            retry.history.append(response)
            retry.request = request
            return retry

        return handle_401
