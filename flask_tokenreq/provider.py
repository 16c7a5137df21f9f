"""The provider blueprint: exchange TokenRequests for tokens, guard resources.

``POST /keys/<keyName>/requestToken`` checks, in this order: shape, key known
and active, MAC, timestamp window, ttl, capability, single use of the nonce;
then mints a token (see :mod:`flask_tokenreq.tokens`) and writes an audit log
line. ``GET /time`` gives the provider's clock. :meth:`TokenProvider.require`
guards any view with those tokens, Ably JWTs or Basic key auth.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hmac
import logging
import string
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    g,
    has_request_context,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BuildError

from .capability import Capability
from .clock import Clock
from .clock import now_ms as wall_clock
from .config import get_int, get_str, get_str_list
from .errors import (
    CapabilityNotPermitted,
    ConfigError,
    IncompatibleClientId,
    InternalError,
    InvalidBody,
    InvalidClientId,
    InvalidCredentials,
    InvalidParameter,
    InvalidToken,
    NonceReplayed,
    StoreUnavailable,
    TimestampNotCurrent,
    TokenReqError,
    Unauthorized,
)
from .http import JSON, MSGPACK, Cors, error_response, json_response, no_store, read_json
from .keys import KeyStore, StaticKeyStore
from .tokenrequest import MIN_NONCE_LENGTH, InvalidTokenRequest, TokenRequest, check_mac
from .tokens import DEFAULT_MAX_TTL_MS, Identity, IssuedToken, TokenService

if TYPE_CHECKING:
    from .nonces import NonceStore

try:  # optional extra
    import msgpack
except ImportError:  # pragma: no cover - depends on the environment
    msgpack = None

log = logging.getLogger("flask_tokenreq.provider")
audit_log = logging.getLogger("flask_tokenreq.audit")

#: Request headers a browser may send cross-origin (what ably-js sends).
CORS_HEADERS = ("content-type", "x-ably-version", "ably-agent", "authorization", "x-ably-clientid")
DEFAULT_WINDOW_S = 120
DEFAULT_TTL_MS = 3_600_000
DEFAULT_MAX_BODY_BYTES = 16 * 1024
#: Longest nonce accepted (characters); Ably clients send 16 to 32.
MAX_NONCE_LENGTH = 256
#: Extra time a nonce is kept beyond ``timestamp + window``.
NONCE_MARGIN_MS = 1000
_EXTENSION = "tokenreq_provider"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

F = TypeVar("F", bound=Callable[..., Any])
ResourceSpec = str | Callable[..., str] | None


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Validated ``TOKENREQ_*`` settings for one app."""

    window_ms: int = DEFAULT_WINDOW_S * 1000
    default_ttl_ms: int = DEFAULT_TTL_MS
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    url_prefix: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProviderSettings:
        window = get_int(config, "TOKENREQ_TIMESTAMP_WINDOW", DEFAULT_WINDOW_S, minimum=1)
        default_ttl = get_int(config, "TOKENREQ_DEFAULT_TTL", DEFAULT_TTL_MS, minimum=1)
        max_ttl = get_int(config, "TOKENREQ_MAX_TTL", DEFAULT_MAX_TTL_MS, minimum=1)
        if default_ttl > max_ttl:
            raise ConfigError(
                f"TOKENREQ_DEFAULT_TTL ({default_ttl} ms) is larger than "
                f"TOKENREQ_MAX_TTL ({max_ttl} ms)"
            )
        max_body = get_int(config, "TOKENREQ_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=256)
        prefix = get_str(config, "TOKENREQ_PROVIDER_URL_PREFIX", "") or ""
        prefix = prefix.rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise ConfigError("TOKENREQ_PROVIDER_URL_PREFIX must be empty or start with '/'")
        return cls(window * 1000, default_ttl, max_ttl, max_body, prefix)


@dataclass(slots=True)
class _State:
    """Everything the provider needs for one app, built once at ``init_app``."""

    settings: ProviderSettings
    keys: KeyStore
    nonces: NonceStore
    tokens: TokenService
    cors: Cors
    now: Clock
    owns_nonces: bool


class TokenProvider:
    """Exchange TokenRequests for tokens and guard views with them.

    ``keys``: a :class:`~flask_tokenreq.keys.KeyStore` (or a list in the
    ``TOKENREQ_PROVIDER_KEYS`` format); default: that setting. ``nonces``: a
    nonce store; default: ``TOKENREQ_NONCE_STORE`` or an SQLite file in the
    instance folder. ``now_ms``: the clock (ms), for tests.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        keys: KeyStore | list[Any] | tuple[Any, ...] | None = None,
        nonces: NonceStore | None = None,
        now_ms: Clock | None = None,
    ) -> None:
        self._keys_arg = keys
        self._nonces_arg = nonces
        self._now_arg = now_ms
        self._states: weakref.WeakKeyDictionary[Flask, _State] = weakref.WeakKeyDictionary()
        self.blueprint = self._make_blueprint()
        if app is not None:
            self.init_app(app)

    # -- set-up --------------------------------------------------------------------

    def init_app(
        self, app: Flask, *, register_blueprint: bool = True, url_prefix: str | None = None
    ) -> None:
        """Validate settings, open the nonce store and register the blueprint.

        The blueprint is registered at ``url_prefix`` (default
        ``TOKENREQ_PROVIDER_URL_PREFIX``, ``""`` = the root). Pass
        ``register_blueprint=False`` to register ``provider.blueprint`` yourself.
        Raises :class:`ConfigError` naming the faulty setting.
        """
        config = app.config
        settings = ProviderSettings.from_config(config)
        if url_prefix is not None:
            settings = replace(settings, url_prefix=url_prefix.rstrip("/"))
        clock = self._now_arg or wall_clock
        keys: KeyStore
        if self._keys_arg is None:
            keys = StaticKeyStore.from_app_config(config)
        elif isinstance(self._keys_arg, (list, tuple)):
            keys = StaticKeyStore.from_config(list(self._keys_arg), setting="keys")
        else:
            keys = self._keys_arg
        tokens = TokenService.from_config(config, now_ms=clock)
        origins = get_str_list(config, "TOKENREQ_PROVIDER_CORS_ORIGINS")
        cors = Cors(origins, methods=("GET", "POST", "OPTIONS"), headers=CORS_HEADERS)
        store_url = get_str(config, "TOKENREQ_NONCE_STORE")
        owns = self._nonces_arg is None
        if self._nonces_arg is not None:
            store = self._nonces_arg
        else:
            from .nonces import default_nonce_store_url, open_nonce_store

            url = store_url or default_nonce_store_url(app.instance_path)
            store = open_nonce_store(url, now_ms=clock, instance_path=app.instance_path)
        old = self._states.get(app)
        self._states[app] = _State(settings, keys, store, tokens, cors, clock, owns)
        if old is not None and old.owns_nonces and old.nonces is not store:
            old.nonces.close()
        app.extensions[_EXTENSION] = self
        if register_blueprint and self.blueprint.name not in app.blueprints:
            app.register_blueprint(self.blueprint, url_prefix=settings.url_prefix or None)

    def _state(self) -> _State:
        app = cast(Any, current_app)._get_current_object()
        state = self._states.get(app)
        if state is None:
            raise RuntimeError("TokenProvider.init_app(app) has not been called for this app")
        return state

    @property
    def keys(self) -> KeyStore:
        """The current app's key store."""
        return self._state().keys

    @property
    def tokens(self) -> TokenService:
        """The current app's :class:`TokenService`."""
        return self._state().tokens

    @property
    def nonces(self) -> NonceStore:
        """The current app's nonce store."""
        return self._state().nonces

    def close(self) -> None:
        """Close the nonce stores this provider opened itself."""
        for state in list(self._states.values()):
            if state.owns_nonces:
                state.nonces.close()

    # -- the blueprint -------------------------------------------------------------

    def _make_blueprint(self) -> Blueprint:
        bp = Blueprint("tokenreq_provider", __name__)

        @bp.route("/keys/<key_name>/requestToken", methods=_ALL_METHODS)
        def request_token(key_name: str) -> ResponseReturnValue:
            state = self._state()
            if request.method == "OPTIONS":
                return state.cors.preflight(request)
            if request.method != "POST":
                raise MethodNotAllowed(valid_methods=["POST", "OPTIONS"])
            try:
                body = _read_body(request, state.settings.max_body_bytes)
                issued = self._exchange(state, key_name, body)
            except TokenReqError as exc:
                _audit("refused", key_name, None, None, exc.code)
                raise
            _audit("issued", issued.key_name, issued.client_id, issued.token_id, None)
            return _details_response(issued.token_details())

        @bp.route("/keys/<path:rest>", methods=_ALL_METHODS)
        def unknown_key_path(rest: str) -> ResponseReturnValue:
            if request.method == "OPTIONS":
                return self._state().cors.preflight(request)
            raise NotFound()

        @bp.route("/time", methods=_ALL_METHODS)
        def time() -> ResponseReturnValue:
            state = self._state()
            if request.method == "OPTIONS":
                return state.cors.preflight(request)
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(valid_methods=["GET", "HEAD", "OPTIONS"])
            # msgpack when asked: ably-js rest.request() decodes by its own Accept.
            return _details_response([state.now()])

        @bp.route("/.well-known/jwks.json", methods=_ALL_METHODS)
        def jwks() -> ResponseReturnValue:
            state = self._state()
            if request.method == "OPTIONS":
                return state.cors.preflight(request)
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(valid_methods=["GET", "HEAD", "OPTIONS"])
            if not state.tokens.asymmetric:
                raise NotFound()
            response = json_response(state.tokens.jwks())
            response.headers["Cache-Control"] = "public, max-age=300"
            del response.headers["Pragma"]
            return response

        @bp.after_request
        def cors_headers(response: Response) -> Response:
            state = self._states.get(cast(Any, current_app)._get_current_object())
            if state is not None and state.cors:
                state.cors.apply(request, response)
            return response

        bp.register_error_handler(TokenReqError, error_response)
        bp.register_error_handler(HTTPException, _http_error)
        bp.register_error_handler(Exception, _unexpected_error)
        return bp

    # -- the exchange --------------------------------------------------------------

    def exchange(self, token_request: TokenRequest | Mapping[str, Any]) -> IssuedToken:
        """Exchange a TokenRequest for a token in-process (needs an app context).

        Runs every check the HTTP endpoint runs and raises the same errors.
        """
        state = self._state()
        if isinstance(token_request, TokenRequest):
            token_request = token_request.to_dict()
        key_name = token_request.get("keyName") if isinstance(token_request, Mapping) else None
        return self._exchange(state, key_name if isinstance(key_name, str) else "", token_request)

    def _exchange(self, state: _State, url_key_name: str, body: Any) -> IssuedToken:
        settings = state.settings
        # 1. shape
        if body is None or not isinstance(body, Mapping):
            raise InvalidTokenRequest("request body must be a TokenRequest JSON object")
        treq = TokenRequest.from_dict(body)
        if len(treq.nonce) < MIN_NONCE_LENGTH:
            raise InvalidTokenRequest(
                f"TokenRequest nonce must be at least {MIN_NONCE_LENGTH} characters"
            )
        if len(treq.nonce) > MAX_NONCE_LENGTH:
            raise InvalidTokenRequest(
                f"TokenRequest nonce must be at most {MAX_NONCE_LENGTH} characters"
            )
        if treq.key_name != url_key_name:
            raise InvalidTokenRequest(
                "TokenRequest keyName does not match the key name in the URL "
                "(POST /keys/<keyName>/requestToken)"
            )
        # 2. key known and active
        key = state.keys.get(treq.key_name)
        if key is None:
            raise InvalidCredentials(f"No key named {treq.key_name!r} is known")
        now = state.now()
        key.check_active(now)
        # 3. MAC
        check_mac(treq, key.secret)
        # 4. timestamp window (both directions)
        skew = treq.timestamp - now
        if abs(skew) > settings.window_ms:
            direction = "ahead of" if skew > 0 else "behind"
            raise TimestampNotCurrent(
                f"Timestamp not current: the TokenRequest timestamp is {abs(skew) // 1000} s "
                f"{direction} the provider clock (allowed: {settings.window_ms // 1000} s). "
                f"Check for clock skew, or sign with the time from GET {_time_path(settings)}"
            )
        # 5. ttl
        ttl = settings.default_ttl_ms if treq.ttl is None else treq.ttl
        if ttl > settings.max_ttl_ms:
            raise InvalidParameter(
                f"TokenRequest ttl {ttl} ms is longer than the maximum "
                f"{settings.max_ttl_ms} ms (ttl is in milliseconds)"
            )
        # 6. capability: requested ∩ key's (absent or "" = the key's)
        if treq.capability is None or treq.capability == "":
            capability = key.capability
        else:
            capability = _granted_capability(treq.capability, key.capability)
        if capability.is_empty():
            raise CapabilityNotPermitted(
                "Capability not permitted: the requested capability and the key's "
                "capability have nothing in common"
            )
        # 7. nonce, single use (only after the MAC passed)
        expires_at = treq.timestamp + settings.window_ms + NONCE_MARGIN_MS
        try:
            fresh = state.nonces.claim(treq.key_name, treq.nonce, expires_at)
        except StoreUnavailable as exc:
            # The details (backend, redacted URL) go to the log, not to the client.
            log.error("nonce store unavailable; refusing the TokenRequest: %s", exc.message)
            raise StoreUnavailable() from None
        except Exception:
            log.exception("nonce store failed; refusing the TokenRequest")
            raise StoreUnavailable() from None
        if not fresh:
            raise NonceReplayed(
                "Nonce value replayed: each TokenRequest can be exchanged once; "
                "sign a new one (and never cache TokenRequests)"
            )
        # 8. mint
        expires = now + ttl
        if key.expires_at_ms is not None:
            expires = min(expires, key.expires_at_ms)
        return state.tokens.mint(
            key_name=treq.key_name,
            capability=capability,
            client_id=treq.client_id,
            issued_ms=now,
            expires_ms=expires,
        )

    # -- guarding views ------------------------------------------------------------

    def verify_token(self, token: str) -> Identity:
        """Verify a token (raw JWT) against the current app's keys."""
        state = self._state()
        return state.tokens.verify(token, state.keys)

    def authenticate(self, req: Request | None = None) -> Identity:
        """The :class:`Identity` of a request's credentials; raises a 401 error.

        ``Authorization: Bearer <jwt or base64 of it>`` or ``Basic
        base64(keyName:secret)``, and an optional ``X-Ably-ClientId``.
        """
        req = request if req is None else req
        state = self._state()
        header = req.headers.get("Authorization")
        if not header:
            raise Unauthorized(
                "Authentication required: send 'Authorization: Bearer <token>' (or Basic key auth)"
            )
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            token = _bearer_token(value, state.tokens.max_token_bytes)
            identity = state.tokens.verify(token, state.keys)
        elif scheme == "basic":
            identity = _basic_identity(value, state)
        else:
            raise Unauthorized("Unsupported Authorization scheme: use Bearer or Basic")
        asserted = req.headers.get("X-Ably-ClientId")
        if asserted is not None:
            client_id = _decode_client_id(asserted)
            if identity.kind == "basic" or identity.client_id == "*":
                identity = replace(identity, client_id=client_id)
            elif identity.client_id != client_id:
                raise IncompatibleClientId(
                    "Incompatible clientId: X-Ably-ClientId does not match the token's clientId"
                )
        return identity

    def require(
        self, operation: str | None = None, resource: ResourceSpec = None
    ) -> Callable[[F], F]:
        """Decorator: the view runs only for a request whose credentials allow it.

        ``operation`` (e.g. ``"publish"``) must be granted on ``resource``:
        a literal channel name, a format string over the view's keyword
        arguments (``"{name}"`` or ``"chat:{room}"``) or a callable receiving
        them (``lambda name, **_: name``). Without ``resource`` the operation
        must be granted on some resource; without ``operation`` any valid
        credentials pass. The :class:`Identity` is put in ``flask.g.tokenreq``.
        Errors are Ably error responses, also on routes outside the blueprint.
        ``OPTIONS`` requests (CORS preflights) pass through unauthenticated.
        """
        resolve = _resource_resolver(resource)

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if request.method == "OPTIONS":
                    return view(*args, **kwargs)
                try:
                    identity = self.authenticate(request)
                    if operation is not None:
                        _check_capability(identity, operation, resolve(kwargs))
                except TokenReqError as exc:
                    return error_response(exc)
                except Exception:
                    log.exception("unexpected error while checking credentials")
                    return error_response(InternalError())
                g.tokenreq = identity
                return view(*args, **kwargs)

            return cast(F, wrapper)

        return decorator


def current_identity() -> Identity | None:
    """The :class:`Identity` verified by ``require()`` for this request, if any."""
    identity = g.get("tokenreq")
    return identity if isinstance(identity, Identity) else None


# -- helpers ---------------------------------------------------------------------------


#: (requested text, id(key capability)) -> (key capability, granted); see below.
_granted_cache: dict[tuple[str, int], tuple[Capability, Capability]] = {}
_GRANTED_CACHE_SIZE = 1024


def _granted_capability(requested: str, key_capability: Capability) -> Capability:
    """``Capability.parse(requested).intersect(key_capability)``, cached.

    Clients request the same few capabilities over and over; the result is
    immutable (its canonical text is then computed once). Only reached after
    the MAC verified, so only key holders fill the cache, which is bounded.
    """
    cache_key = (requested, id(key_capability))
    hit = _granted_cache.get(cache_key)
    if hit is not None and hit[0] is key_capability:
        return hit[1]
    granted = Capability.parse(requested).intersect(key_capability)
    if len(_granted_cache) >= _GRANTED_CACHE_SIZE:
        _granted_cache.clear()
    _granted_cache[cache_key] = (key_capability, granted)
    return granted


def _read_body(req: Request, max_bytes: int) -> Any:
    if req.mimetype != MSGPACK:
        return read_json(req, max_bytes=max_bytes)
    if msgpack is None:
        raise InvalidBody(
            "msgpack bodies need the msgpack extra (pip install flask-tokenreq[msgpack])"
        )
    length = req.content_length
    raw = b"" if length is not None and length > max_bytes else req.stream.read(max_bytes + 1)
    if (length is not None and length > max_bytes) or len(raw) > max_bytes:
        raise InvalidBody(f"request body too large: at most {max_bytes} bytes")
    if not raw:
        raise InvalidBody("request body is empty: send a TokenRequest")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception:
        raise InvalidBody("request body is not valid msgpack") from None


def _time_path(settings: ProviderSettings) -> str:
    """Where ``GET /time`` is served (for error messages)."""
    if has_request_context() and "tokenreq_provider" in current_app.blueprints:
        with contextlib.suppress(BuildError):
            return url_for("tokenreq_provider.time")
    return f"{settings.url_prefix}/time"


def _details_response(details: Any) -> Response:
    """JSON, or msgpack when ``Accept`` prefers it (TokenDetails, ``/time``)."""
    if (
        msgpack is not None
        and "msgpack" in request.headers.get("Accept", "")
        and request.accept_mimetypes.best_match((JSON, MSGPACK)) == MSGPACK
    ):
        return no_store(Response(msgpack.packb(details, use_bin_type=True), mimetype=MSGPACK))
    return json_response(details)


def _audit(
    outcome: str, key_name: str, client_id: str | None, token_id: str | None, code: int | None
) -> None:
    if not audit_log.isEnabledFor(logging.INFO):
        return
    remote = request.remote_addr
    audit_log.info(
        "requestToken %s keyName=%r clientId=%r jti=%s code=%s remote=%s",
        outcome,
        key_name,
        client_id,
        token_id,
        code,
        remote,
        extra={
            "tokenreq": {
                "event": "requestToken",
                "outcome": outcome,
                "key_name": key_name,
                "client_id": client_id,
                "jti": token_id,
                "code": code,
                "remote": remote,
            }
        },
    )


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = {404: "Not found", 405: "Method not allowed"}.get(status, exc.name)
    response = error_response(TokenReqError(message, code=status * 100, status=status))
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # pragma: no cover - routed to _http_error
        return _http_error(exc)
    log.error("unexpected error in the token provider", exc_info=exc)
    return error_response(InternalError())


def _bearer_token(value: str, max_bytes: int) -> str:
    """A raw JWT, or standard base64 of one (as Ably SDKs send)."""
    if not value:
        raise Unauthorized("Authorization: Bearer needs a token")
    if "." in value:
        return value
    if len(value) > (max_bytes * 4) // 3 + 4:
        raise InvalidToken(f"token is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidToken("bearer token is neither a JWT nor base64 of one") from None


def _basic_identity(value: str, state: _State) -> Identity:
    if len(value) > 4096:
        raise InvalidCredentials("Basic credentials are too long")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCredentials("Basic credentials are not valid base64") from None
    name_bytes, sep, secret_bytes = decoded.partition(b":")
    if not sep:
        raise InvalidCredentials("Basic credentials must be base64 of 'keyName:secret'")
    try:
        key_name = name_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCredentials("Basic credentials key name is not UTF-8") from None
    key = state.keys.get(key_name)
    if key is None:
        raise InvalidCredentials(f"No key named {key_name!r} is known")
    if not hmac.compare_digest(secret_bytes, key.secret.encode("utf-8")):
        raise InvalidCredentials("Invalid credentials: wrong key secret")
    key.check_active(state.now())
    return Identity(
        key_name=key_name,
        client_id=None,
        capability=key.capability,
        expires_ms=key.expires_at_ms,
        kind="basic",
    )


def _decode_client_id(value: str) -> str:
    try:
        client_id = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidClientId("X-Ably-ClientId must be base64 of a UTF-8 clientId") from None
    if not client_id or client_id == "*":
        raise InvalidClientId("X-Ably-ClientId must name one non-empty clientId")
    return client_id


def _resource_resolver(resource: ResourceSpec) -> Callable[[Mapping[str, Any]], str | None]:
    if resource is None:
        return lambda kwargs: None
    if callable(resource):
        func = resource
        return lambda kwargs: func(**kwargs)
    if not isinstance(resource, str):
        raise TypeError("resource must be a string, a format string or a callable")
    fields = [name for _, name, _, _ in string.Formatter().parse(resource) if name is not None]
    if not fields:
        literal = resource
        return lambda kwargs: literal
    template = resource
    return lambda kwargs: template.format_map(kwargs)


def _check_capability(identity: Identity, operation: str, resource: str | None) -> None:
    if resource is None:
        granted = any(
            operation in ops or "*" in ops for ops in identity.capability.to_dict().values()
        )
        where = "any resource"
    else:
        granted = identity.capability.allows(operation, resource)
        where = repr(resource)
    if not granted:
        raise CapabilityNotPermitted(
            f"Capability not permitted: {operation!r} on {where} is not granted"
        )
