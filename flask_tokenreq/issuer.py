"""The issuer blueprint: signs TokenRequests for the logged-in user.

::

    issuer = TokenIssuer(app)  # registers GET|POST /tokenreq/token

    @issuer.client_id_loader
    def client_id(user):
        return user.username

    @issuer.capability_loader
    def capability(user, request):
        return {"chat:*": ["publish", "subscribe"]}

The endpoint answers a TokenRequest (default), an Ably JWT (``format=jwt``,
with the user's properties from ``@issuer.claims_loader`` as claims) or
TokenDetails fetched from the provider (``format=token``). What a request
asks for (``capability``, ``ttl``, ``clientId``) only ever narrows what the
hooks allow. The key's secret never leaves the process: it is in no response,
header, error message or log line. See ``docs/issuer.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import jwt
from flask import Blueprint, Flask, Request, Response, current_app, request
from flask_login import current_user  # type: ignore[import-untyped]
from werkzeug.exceptions import HTTPException
from werkzeug.formparser import FormDataParser

from . import extension, signals
from . import settings as cfg
from .capability import Capability, InvalidCapability
from .client import exchange
from .clock import Clock, now_ms
from .errors import (
    BadRequest,
    BodyTooLarge,
    CapabilityNotPermitted,
    ConfigError,
    Forbidden,
    IncompatibleClientId,
    InternalError,
    InvalidBody,
    InvalidClientId,
    InvalidParameter,
    ProviderUnreachable,
    Unauthorized,
    ably_errors,
)
from .http import (
    ALL_METHODS,
    JSON,
    JWT,
    Cors,
    allow,
    json_response,
    no_store,
    parse_json,
    read_body,
)
from .keys.base import configured_key
from .tokenrequest import TokenRequest, sign_token_request, text_problem
from .tokens import reserved_claim

__all__ = [
    "DEFAULT_TTL",
    "DEFAULT_URL_PREFIX",
    "FORMATS",
    "IssuerSettings",
    "TokenIssuer",
]

logger = logging.getLogger(__name__)

#: Extension name in ``app.extensions`` and blueprint name.
EXTENSION = extension.ISSUER
#: Where the per-app state lives in ``app.extensions``.
STATE = EXTENSION + ".state"
DEFAULT_URL_PREFIX = "/tokenreq"
#: Default (and maximum) ttl of what the issuer signs: 60 minutes, in ms.
DEFAULT_TTL = 3_600_000
FORMATS = ("tokenrequest", "jwt", "token")
#: Largest request body the endpoint reads (form or JSON), chunked or not.
MAX_BODY = 64 * 1024
#: Most form fields parsed from a body.
MAX_FIELDS = 64

_DIGITS = re.compile(r"[0-9]{1,15}")

#: What a hook may return for a capability: parsed, a mapping or JSON text.
CapabilityLike = Capability | Mapping[str, Any] | str
ClientIdLoader = Callable[[Any], str | None]
CapabilityLoader = Callable[[Any, Request], CapabilityLike | None]
Authorizer = Callable[[Any, Request], bool]
ProjectLoader = Callable[[Any, str], CapabilityLike | None]
ClaimsLoader = Callable[[Any], Mapping[str, Any] | None]

_C = TypeVar("_C", bound=ClientIdLoader)
_K = TypeVar("_K", bound=CapabilityLoader)
_A = TypeVar("_A", bound=Authorizer)
_P = TypeVar("_P", bound=ProjectLoader)
_L = TypeVar("_L", bound=ClaimsLoader)


#: The provider could not be reached (``format=token``): 503, code 50003.
ProviderUnavailable = ProviderUnreachable


@dataclass(frozen=True)
class IssuerSettings:
    """Validated per-app settings. The key is kept out of ``repr``."""

    key: str | None = field(repr=False)
    key_name: str | None
    ttl: int
    min_ttl: int
    cors: Cors = field(repr=False)
    capability: Capability | None
    provider_url: str | None
    provider_timeout: float
    url_prefix: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any], url_prefix: str | None) -> IssuerSettings:
        """Read and validate every issuer setting; raises :class:`ConfigError`."""
        key = cfg.read(config, "TOKENREQ_KEY")
        key_name = configured_key("TOKENREQ_KEY", key)[0] if key is not None else None
        if url_prefix is None:
            url_prefix = cfg.read(config, "TOKENREQ_ISSUER_URL_PREFIX")
        else:
            url_prefix = cfg.SETTINGS["TOKENREQ_ISSUER_URL_PREFIX"].check(
                "TOKENREQ_ISSUER_URL_PREFIX", url_prefix
            )
        return cls(
            key=key,
            key_name=key_name,
            ttl=cfg.read(config, "TOKENREQ_TTL"),
            min_ttl=cfg.read(config, "TOKENREQ_MIN_TTL"),
            cors=Cors(cfg.read(config, "TOKENREQ_CORS_ORIGINS")),
            capability=cfg.read(config, "TOKENREQ_ISSUER_CAPABILITY"),
            provider_url=cfg.read(config, "TOKENREQ_PROVIDER_URL"),
            provider_timeout=cfg.read(config, "TOKENREQ_PROVIDER_TIMEOUT"),
            url_prefix=str(url_prefix),
        )


@dataclass(frozen=True)
class _State:
    """What one app's issuer holds: its settings and its clock."""

    settings: IssuerSettings
    now: Clock


class TokenIssuer:
    """Flask extension serving ``GET|POST <prefix>/token`` for logged-in users.

    ``url_prefix`` overrides ``TOKENREQ_ISSUER_URL_PREFIX`` (default
    ``/tokenreq``); with ``register_blueprint=False``, ``init_app`` leaves
    registering :attr:`blueprint` to you. ``now_ms`` is the clock (ms).
    Per-app state lives in ``app.extensions``, so one issuer can serve
    several apps.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str | None = None,
        register_blueprint: bool = True,
        now_ms: Clock | None = None,
    ) -> None:
        self.url_prefix = url_prefix
        self.register_blueprint = register_blueprint
        self.now_ms = now_ms
        self._client_id_loader: ClientIdLoader | None = None
        self._capability_loader: CapabilityLoader | None = None
        self._project_loader: ProjectLoader | None = None
        self._claims_loader: ClaimsLoader | None = None
        self._authorizers: list[Authorizer] = []
        self.blueprint = self._make_blueprint()
        if app is not None:
            self.init_app(app)

    # -- setup -------------------------------------------------------------

    def init_app(
        self,
        app: Flask,
        *,
        register_blueprint: bool | None = None,
        url_prefix: str | None = None,
    ) -> None:
        """Validate settings (``ConfigError`` naming the setting) and register.

        ``register_blueprint`` and ``url_prefix`` override the constructor's.
        A second issuer (or a second ``init_app``) on one app is an error. On an
        app that is a provider too, ``TOKENREQ_TTL`` may not exceed
        ``TOKENREQ_MAX_TTL`` (else the app would refuse its own TokenRequests).
        """
        extension.check_unregistered(app, EXTENSION, self)
        settings = IssuerSettings.from_config(
            app.config, url_prefix if url_prefix is not None else self.url_prefix
        )
        if extension.PROVIDER in app.extensions:
            cfg.check_both_roles(app.config)
        if settings.key is None:
            logger.warning("TOKENREQ_KEY is not set: the issuer answers 500 until it is")
        extension.register(app, EXTENSION, self, _State(settings, self.now_ms or now_ms))
        if register_blueprint if register_blueprint is not None else self.register_blueprint:
            app.register_blueprint(self.blueprint, url_prefix=settings.url_prefix)

    def _state(self, app: Flask | None = None) -> _State:
        return extension.state_of(self, EXTENSION, _State, app)

    def settings(self, app: Flask | None = None) -> IssuerSettings:
        """The validated settings for ``app`` (default: the current app)."""
        return self._state(app).settings

    def _make_blueprint(self) -> Blueprint:
        bp = Blueprint(EXTENSION, __name__)
        bp.add_url_rule("/token", "token", self._view, methods=ALL_METHODS)
        bp.add_url_rule("/tokenreq.js", "script", _script_view, methods=["GET"])
        ably_errors(bp)
        bp.after_request(self._after_request)
        return bp

    def _after_request(self, response: Response) -> Response:
        """CORS headers (errors included) and ``no-store`` on every answer of the endpoint."""
        if request.endpoint != f"{EXTENSION}.token":
            return response
        with contextlib.suppress(InternalError):
            self._state().settings.cors.apply(request, response)
        return no_store(response)

    # -- hooks -------------------------------------------------------------

    def client_id_loader(self, f: _C) -> _C:
        """Register ``f(user) -> clientId | None`` (``"*"``: any clientId)."""
        self._client_id_loader = f
        return f

    def capability_loader(self, f: _K) -> _K:
        """Register ``f(user, request) -> capability | None`` (None: nothing)."""
        self._capability_loader = f
        return f

    def project_loader(self, f: _P) -> _P:
        """Register ``f(user, project_id) -> capability | None`` (None: not allowed)."""
        self._project_loader = f
        return f

    def claims_loader(self, f: _L) -> _L:
        """Register ``f(user) -> mapping | None``: the user's properties for ``format=jwt``.

        They become top-level claims of the Ably JWT (e.g. ``organizationId``,
        ``email``), which the provider shows on ``flask.g.tokenreq.claims``.
        Setting a reserved claim (``exp``, ``iat``, ``nbf``, ``iss``, ``jti``,
        ``kid``, ``x-ably-*``) is an error naming it (500). TokenRequests
        carry no claims: the loader is used for ``format=jwt`` only.
        """
        self._claims_loader = f
        return f

    def authorize(self, f: _A) -> _A:
        """Register ``f(user, request) -> bool``; falsy refuses (403), errors pass on."""
        self._authorizers.append(f)
        return f

    # -- the endpoint ------------------------------------------------------

    def _view(self) -> Response:
        state = self._state()
        if request.method == "OPTIONS":
            cors = state.settings.cors
            response = cors.preflight(request) if cors else Response(status=204)
            response.headers["Allow"] = "GET, HEAD, POST, OPTIONS"
            return response
        allow(request, "GET", "HEAD", "POST")
        return self._issue(state)

    def _issue(self, state: _State) -> Response:
        settings = state.settings
        key, key_name = _key(settings)
        if getattr(current_app, "login_manager", None) is None:
            raise InternalError("Token issuer needs flask-login: set up a LoginManager")
        user = current_user._get_current_object()  # resolve the proxy once
        if not user.is_authenticated:
            raise Unauthorized("Login required: sign in to get a token")
        for authorizer in self._authorizers:
            if not authorizer(user, request):
                raise Forbidden("Not allowed to obtain a token")

        params = _request_params(request)
        fmt = _format_param(params)
        ttl = _ttl_param(params, settings)
        requested_client_id = _client_id_param(params)
        raw_cap = params.get("capability")
        requested_cap = None if raw_cap is None else _parse_capability(raw_cap, "capability")
        project_id = _project_param(params)

        client_id = self._client_id(user, requested_client_id)
        capability = self._capability(user, settings, project_id, requested_cap)

        if fmt == "jwt":
            claims = self._claims(user)
            issued = state.now()
            token, iat, exp = _ably_jwt(key, key_name, ttl, capability, client_id, issued, claims)
            logger.debug("issued JWT keyName=%s clientId=%r", key_name, client_id)
            if request.accept_mimetypes.best_match((JWT, JSON)) == JSON:
                # TokenDetails: what a JSON client (ably-js's authUrl included) takes.
                details: dict[str, Any] = {
                    "token": token,
                    "expires": exp * 1000,
                    "issued": iat * 1000,
                    "capability": capability.canonical,
                }
                if client_id is not None:
                    details["clientId"] = client_id
                response = json_response(details)
            else:
                response = Response(token, status=200)
                response.headers["Content-Type"] = JWT
            response.vary.add("Accept")
            return response
        token_request = sign_token_request(
            key, ttl=ttl, capability=capability, client_id=client_id, now=state.now
        )
        signals.token_request_signed.send(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            token_request=token_request,
            user=user,
        )
        if fmt == "token":
            if settings.provider_url is None:
                raise InvalidParameter(
                    "format=token is not enabled on this server (TOKENREQ_PROVIDER_URL is not set)"
                )
            details = _request_token(
                settings.provider_url, token_request, timeout=settings.provider_timeout
            )
            logger.debug("issued token keyName=%s clientId=%r", key_name, client_id)
            return json_response(details)
        logger.debug("issued TokenRequest keyName=%s clientId=%r", key_name, client_id)
        return json_response(token_request.to_dict())

    def _client_id(self, user: Any, requested: str | None) -> str | None:
        """The user's clientId, narrowed by the request (never changed)."""
        if self._client_id_loader is not None:
            allowed = self._client_id_loader(user)
        else:
            allowed = user.get_id()
        if allowed is not None and (not isinstance(allowed, str) or text_problem(allowed)):
            raise InternalError("client_id_loader returned an invalid clientId")
        if requested is None or requested == allowed or allowed == "*":
            return allowed if requested is None else requested
        if allowed is None:
            raise IncompatibleClientId(
                "This user may not choose a clientId; omit clientId", status=403
            )
        if requested == "*":
            raise IncompatibleClientId(
                "Wildcard clientId '*' is not allowed for this user", status=403
            )
        raise IncompatibleClientId(
            "Requested clientId does not match the signed-in user's clientId", status=403
        )

    def _claims(self, user: Any) -> Mapping[str, Any]:
        """The user's extra JWT claims from ``@claims_loader`` (none without one)."""
        if self._claims_loader is None:
            return {}
        claims = self._claims_loader(user)
        if claims is None:
            return {}
        if not isinstance(claims, Mapping):
            raise InternalError("claims_loader must return a mapping of claim names to values")
        for name in claims:
            if not isinstance(name, str) or not name:
                raise InternalError("claims_loader returned a claim name that is not a string")
            if reserved_claim(name):
                logger.error("claims_loader set the reserved claim %r", name)
                raise InternalError(
                    f"claims_loader may not set the reserved claim {name!r} "
                    "(exp, iat, nbf, iss, jti, kid and x-ably-* say what the token is)"
                )
        try:
            json.dumps(dict(claims), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise InternalError("claims_loader returned a value that is not JSON") from None
        return claims

    def _capability(
        self,
        user: Any,
        settings: IssuerSettings,
        project_id: str | None,
        requested: Capability | None,
    ) -> Capability:
        """What the user may have, scoped to the project, narrowed by the request."""
        allowed: Capability | None
        if self._capability_loader is not None:
            allowed = _loaded_capability(
                self._capability_loader(user, request), "capability_loader"
            )
        elif settings.capability is not None:
            allowed = settings.capability
        else:
            raise InternalError(
                "Token issuer has no capability: register @issuer.capability_loader "
                "or set TOKENREQ_ISSUER_CAPABILITY"
            )
        if allowed is None:
            raise Forbidden("This user may not obtain a token")
        if project_id is not None:
            if self._project_loader is None:
                raise BadRequest("projectId is not supported by this issuer")
            project = _loaded_capability(self._project_loader(user, project_id), "project_loader")
            if project is None:
                raise Forbidden("Not allowed to use this project")
            allowed = allowed.intersect(project)
        if allowed.is_empty():
            raise CapabilityNotPermitted("No capability is allowed for this user", status=403)
        if requested is None:
            return allowed
        granted = requested.intersect(allowed)
        if granted.is_empty():
            raise CapabilityNotPermitted(
                "Requested capability is not permitted for this user", status=403
            )
        return granted


def _ably_jwt(
    key: str,
    key_name: str,
    ttl: int,
    cap: Capability,
    client_id: str | None,
    issued: int,
    extra: Mapping[str, Any],
) -> tuple[str, int, int]:
    """An Ably JWT signed HS256 with the key's secret, ``kid`` = keyName; and its iat, exp (s).

    ``extra`` (checked by :meth:`TokenIssuer._claims`) are the user's claims.
    """
    secret = key.partition(":")[2]
    iat = issued // 1000
    exp = iat + math.ceil(ttl / 1000)
    claims: dict[str, Any] = {
        **extra,
        "iat": iat,
        "exp": exp,
        "x-ably-capability": cap.canonical,
    }
    if client_id is not None:
        claims["x-ably-clientId"] = client_id
    token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_name})
    return token, iat, exp


# -- the browser helper ---------------------------------------------------------------


@cache
def _script() -> tuple[bytes, str]:
    """The browser helper ``static/tokenreq.js`` (package data) and its ETag."""
    body = resources.files("flask_tokenreq").joinpath("static").joinpath("tokenreq.js").read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:32]


def _script_view() -> Response:
    """``GET <prefix>/tokenreq.js``: the ES module; revalidated on each use (ETag).

    A public file: any origin may import it (module scripts are fetched with CORS).
    """
    body, etag = _script()
    response = Response(body, content_type="text/javascript; charset=utf-8")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.make_conditional(request)
    return response


def _key(settings: IssuerSettings) -> tuple[str, str]:
    """The key and key name; when unset at ``init_app``, looked up again (500 if missing)."""
    if settings.key is not None and settings.key_name is not None:
        return settings.key, settings.key_name
    try:
        key = cfg.read(current_app.config, "TOKENREQ_KEY")
    except ConfigError as exc:
        raise InternalError(f"Token issuer is misconfigured: {exc}") from None
    if key is None:
        raise InternalError(
            "Token issuer is not configured: set TOKENREQ_KEY to the key "
            "'appId.keyId:secret' (in app.config or the environment)"
        )
    return key, configured_key("TOKENREQ_KEY", key)[0]


# -- request parameters ------------------------------------------------------


def _request_params(req: Request) -> dict[str, Any]:
    """Query params merged with a form or JSON body (body wins); empty = absent.

    The body is read up to :data:`MAX_BODY` bytes whatever its framing
    (chunked too) and whatever the app's ``MAX_CONTENT_LENGTH``.
    """
    params: dict[str, Any] = dict(req.args.items()) if req.query_string else {}
    if req.method == "POST":
        if req.is_json:
            raw = read_body(req, MAX_BODY, BodyTooLarge)
            body = parse_json(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise InvalidBody("JSON body must be an object of token parameters")
            params.update(body)
        elif req.mimetype == "application/x-www-form-urlencoded":
            params.update(_form_fields(read_body(req, MAX_BODY, BodyTooLarge)))
        elif req.mimetype == "multipart/form-data":
            params.update(_multipart_fields(req, read_body(req, MAX_BODY, BodyTooLarge)))
    return {k: v for k, v in params.items() if v is not None and v != ""}


def _form_fields(raw: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidBody(
            f"form body is not valid UTF-8 form data (at most {MAX_FIELDS} fields)"
        ) from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)  # the first value wins, as request.form.get does
    return fields


def _multipart_fields(req: Request, raw: bytes) -> dict[str, str]:
    """The text fields of a multipart body already read (and bounded) by :func:`read_body`."""
    parser = FormDataParser(max_form_memory_size=MAX_BODY, max_form_parts=MAX_FIELDS)
    try:
        _, form, _ = parser.parse(io.BytesIO(raw), req.mimetype, len(raw), req.mimetype_params)
    except HTTPException:
        raise InvalidBody(f"multipart body is malformed (at most {MAX_FIELDS} fields)") from None
    return dict(form.items())


def _str_param(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _format_param(params: Mapping[str, Any]) -> str:
    fmt = (_str_param(params, "format") or "tokenrequest").lower()
    if fmt not in FORMATS:
        raise InvalidParameter(f"format must be one of {', '.join(FORMATS)}")
    return fmt


def _ttl_param(params: Mapping[str, Any], settings: IssuerSettings) -> int:
    """``ttl`` in ms: a whole number in ``[TOKENREQ_MIN_TTL, TOKENREQ_TTL]``."""
    value = params.get("ttl")
    if value is None:
        return settings.ttl
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        ttl = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        ttl = value
    else:
        raise InvalidParameter("ttl must be a whole number of milliseconds")
    if ttl <= 0:
        raise InvalidParameter("ttl must be a positive number of milliseconds")
    if ttl > settings.ttl:
        raise InvalidParameter(f"ttl must be at most {settings.ttl} ms")
    if ttl < settings.min_ttl:
        hint = ""
        if settings.min_ttl <= ttl * 1000 <= settings.ttl:  # as seconds, it would be allowed
            hint = f"; ttl is in milliseconds: {ttl} seconds is ttl={ttl * 1000}"
        raise InvalidParameter(
            f"ttl {ttl} ms is shorter than the minimum {settings.min_ttl} ms{hint}"
        )
    return ttl


def _client_id_param(params: Mapping[str, Any]) -> str | None:
    """The requested clientId, checked as a signed field is, whatever the format."""
    camel = _str_param(params, "clientId")
    snake = _str_param(params, "client_id")
    if camel is not None and snake is not None and camel != snake:
        raise BadRequest("clientId and client_id differ; send one of them")
    requested = camel if camel is not None else snake
    if requested is not None:
        problem = text_problem(requested)
        if problem is not None:
            raise InvalidClientId(f"clientId {problem}; omit it to get your own")
    return requested


def _project_param(params: Mapping[str, Any]) -> str | None:
    value = params.get("projectId")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is not None and not isinstance(value, str):
        raise BadRequest("projectId must be a string")
    return value


def _parse_capability(value: object, what: str) -> Capability:
    """Parse a capability, turning every failure into :class:`InvalidCapability`."""
    if isinstance(value, Capability):
        return value
    if not isinstance(value, (str, Mapping)):
        raise InvalidCapability(
            f"{what} must be a JSON object mapping channel names to lists of operations"
        )
    try:
        return Capability.parse(value)
    except InvalidCapability as exc:
        raise InvalidCapability(f"{what} is invalid: {exc.message}") from None
    except (RecursionError, TypeError, ValueError):
        raise InvalidCapability(f"{what} is not valid JSON") from None


def _loaded_capability(value: object, hook: str) -> Capability | None:
    """A hook's capability, or ``None``; a malformed one is a server error."""
    if value is None:
        return None
    try:
        return _parse_capability(value, hook)
    except InvalidCapability as exc:
        logger.error("%s returned an invalid capability: %s", hook, exc.message)
        raise InternalError(f"{hook} returned an invalid capability") from None


# -- format=token: the exchange with the provider ------------------------------


def _request_token(provider_url: str, token_request: TokenRequest, *, timeout: float) -> Any:
    """Exchange at ``<provider>/keys/<keyName>/requestToken`` (:func:`client.exchange`).

    Provider errors are raised with their code, message and status. An
    unreachable provider is 503 (50003), its address kept out of the answer.
    """
    try:
        return exchange(token_request, provider_url, timeout=timeout)
    except ProviderUnreachable as exc:
        logger.warning("token provider unreachable: %s", exc.message)
        raise ProviderUnavailable("Token provider unreachable; try again later") from None
