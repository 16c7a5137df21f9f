"""The provider blueprint: exchange TokenRequests for tokens, guard resources.

``POST /keys/<keyName>/requestToken`` checks, in this order: shape, key known
and active, MAC, timestamp window, ttl, capability, single use of the nonce;
then mints a token (see :mod:`flask_tokenreq.tokens`) and records the outcome
(signals, audit log line, and the audit table when a database is in use).
``POST /keys/<keyName>/revokeTokens`` is Ably's token revocation, for the
key itself. ``GET /time`` gives the provider's clock.
:meth:`TokenProvider.require` guards any view with those tokens, Ably JWTs or
the key itself (``Basic``, or ``Bearer`` with a managed key).

Keys come from a :class:`~flask_tokenreq.keys.chain.KeyChain`: static keys
(``TOKENREQ_PROVIDER_KEYS``) and, with ``TOKENREQ_KEY_ENCRYPTION_KEYS``,
managed keys from ``TOKENREQ_DATABASE_URL``.
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
from werkzeug.routing import BuildError

from . import extension, signals
from . import settings as cfg
from .capability import Capability
from .clock import Clock
from .clock import now_ms as wall_clock
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
    NotFound,
    StoreUnavailable,
    TimestampNotCurrent,
    TokenAuthNotAllowed,
    TokenReqError,
    Unauthorized,
    ably_errors,
)
from .http import (
    ALL_METHODS,
    MSGPACK,
    Cors,
    ably_response,
    allow,
    json_response,
    parse_json,
    parse_msgpack,
    read_body,
)
from .keys.base import ApiKey, KeyStore, parse_key
from .keys.chain import KeyChain
from .keys.secret import PREFIX as SECRET_PREFIX
from .keys.secret import check_secret_format, looks_like_managed_key
from .keys.static import StaticKeyStore
from .tokenrequest import MIN_NONCE_LENGTH, InvalidTokenRequest, TokenRequest, verify_mac
from .tokens import Identity, IssuedToken, TokenService

if TYPE_CHECKING:
    from .audit import AuditLog
    from .stores import NonceStore

log = logging.getLogger("flask_tokenreq.provider")
audit_log = logging.getLogger("flask_tokenreq.audit")

#: Request headers a browser may send cross-origin (what ably-js sends).
CORS_HEADERS = ("content-type", "x-ably-version", "ably-agent", "authorization", "x-ably-clientid")
#: Longest nonce accepted (characters); Ably clients send 16 to 32.
MAX_NONCE_LENGTH = 256
#: How long a claim outlives the last moment its request could be accepted. Hosts
#: sharing a nonce store each judge expiry on their own clock, so a host whose clock
#: is ahead lets a claim go early: this margin is the clock difference between
#: hosts that still cannot let a replay through (see :func:`claim_nonce`).
NONCE_MARGIN_MS = 60_000
#: Extension name in ``app.extensions`` and blueprint name.
EXTENSION = extension.PROVIDER
#: Where the per-app state lives in ``app.extensions``.
STATE = EXTENSION + ".state"

F = TypeVar("F", bound=Callable[..., Any])
ResourceSpec = str | Callable[..., str] | None


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Validated ``TOKENREQ_*`` settings for one app."""

    window_ms: int
    default_ttl_ms: int
    max_ttl_ms: int
    max_body_bytes: int
    url_prefix: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProviderSettings:
        default_ttl = cfg.read(config, "TOKENREQ_DEFAULT_TTL")
        max_ttl = cfg.read(config, "TOKENREQ_MAX_TTL")
        if default_ttl > max_ttl:
            raise ConfigError(
                f"TOKENREQ_DEFAULT_TTL ({default_ttl} ms) is larger than "
                f"TOKENREQ_MAX_TTL ({max_ttl} ms)"
            )
        return cls(
            window_ms=cfg.read(config, "TOKENREQ_TIMESTAMP_WINDOW") * 1000,
            default_ttl_ms=default_ttl,
            max_ttl_ms=max_ttl,
            max_body_bytes=cfg.read(config, "TOKENREQ_MAX_BODY_BYTES"),
            url_prefix=cfg.read(config, "TOKENREQ_PROVIDER_URL_PREFIX"),
        )


@dataclass(slots=True)
class _State:
    """Everything the provider needs for one app, built once at ``init_app``."""

    settings: ProviderSettings
    keys: KeyChain
    nonces: NonceStore
    tokens: TokenService
    cors: Cors
    now: Clock
    owns_nonces: bool
    #: The audit table, when a database is in use (else ``None``).
    audit: AuditLog | None
    #: Whether :meth:`TokenProvider.close` closes the managed keys and the audit log.
    owns_keys: bool


class TokenProvider:
    """Exchange TokenRequests for tokens and guard views with them.

    ``keys``: the static keys, a :class:`~flask_tokenreq.keys.KeyStore` (or a
    list in the ``TOKENREQ_PROVIDER_KEYS`` format); default: that setting.
    Managed keys are added when ``TOKENREQ_KEY_ENCRYPTION_KEYS`` is set. A
    :class:`~flask_tokenreq.keys.chain.KeyChain` is used as given (both kinds,
    your own :class:`~flask_tokenreq.keys.sql.SqlKeyStore`). ``nonces``: a
    nonce store; default: ``TOKENREQ_NONCE_STORE`` or an SQLite file in the
    instance folder. ``now_ms``: the clock (ms), for tests. Per-app state
    lives in ``app.extensions``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        keys: KeyStore | KeyChain | list[Any] | tuple[Any, ...] | None = None,
        nonces: NonceStore | None = None,
        now_ms: Clock | None = None,
    ) -> None:
        self._keys_arg = keys
        self._nonces_arg = nonces
        self._now_arg = now_ms
        #: Apps this provider was initialised on (for :meth:`close`); state is in their extensions.
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self.blueprint = self._make_blueprint()
        if app is not None:
            self.init_app(app)

    # -- set-up --------------------------------------------------------------------

    def init_app(
        self, app: Flask, *, register_blueprint: bool = True, url_prefix: str | None = None
    ) -> None:
        """Validate settings, open the stores and register the blueprint.

        With managed keys, the database's tables are created if missing and
        the encryption keys checked against it: a wrong or missing key is a
        :class:`ConfigError` here; a database that cannot be reached is a
        logged warning (requests that need it get 503 until it is back).
        The blueprint is registered at ``url_prefix`` (default
        ``TOKENREQ_PROVIDER_URL_PREFIX``, ``""`` = the root). Pass
        ``register_blueprint=False`` to register ``provider.blueprint`` yourself.
        Raises :class:`ConfigError` naming the faulty setting (on an app that is
        an issuer too: ``TOKENREQ_TTL`` above ``TOKENREQ_MAX_TTL``); a second
        provider (or a second ``init_app``) on one app is an error, raised before
        anything is opened.
        """
        extension.check_unregistered(app, EXTENSION, self)  # before anything is opened
        config = app.config
        settings = ProviderSettings.from_config(config)
        if extension.ISSUER in app.extensions:
            cfg.check_both_roles(config)
        if url_prefix is not None:
            settings = replace(settings, url_prefix=url_prefix.rstrip("/"))
        clock = self._now_arg or wall_clock
        tokens = TokenService.from_config(config, now_ms=clock)
        cors = Cors(
            cfg.read(config, "TOKENREQ_PROVIDER_CORS_ORIGINS"),
            methods=("GET", "POST", "OPTIONS"),
            headers=CORS_HEADERS,
        )
        owns = self._nonces_arg is None
        if self._nonces_arg is not None:
            store = self._nonces_arg
        else:
            from .stores import default_nonce_store_url, open_nonce_store

            url = cfg.read(config, "TOKENREQ_NONCE_STORE") or default_nonce_store_url(
                app.instance_path
            )
            store = open_nonce_store(url, now_ms=clock, instance_path=app.instance_path)
        owns_keys = not isinstance(self._keys_arg, KeyChain)
        keys: KeyChain | None = None
        try:
            if isinstance(self._keys_arg, KeyChain):
                keys, audit = self._keys_arg, None
                if keys.managed is not None:
                    audit = keys.managed.audit
            else:
                keys, audit = _open_keys(config, app.instance_path, clock, self._keys_arg)
            keys.open()
        except BaseException:
            # A ConfigError here leaves nothing open that this call opened.
            if owns:
                store.close()
            if owns_keys and keys is not None and keys.managed is not None:
                keys.managed.close()
            raise
        state = _State(settings, keys, store, tokens, cors, clock, owns, audit, owns_keys)
        extension.register(app, EXTENSION, self, state)
        if audit is not None:
            _audit_exchanges(app, audit)
        self._apps.add(app)
        if register_blueprint and self.blueprint.name not in app.blueprints:
            app.register_blueprint(self.blueprint, url_prefix=settings.url_prefix or None)

    def _state(self, app: Flask | None = None) -> _State:
        return extension.state_of(self, EXTENSION, _State, app)

    @property
    def keys(self) -> KeyChain:
        """The current app's keys: static, then managed."""
        return self._state().keys

    @property
    def audit(self) -> AuditLog | None:
        """The current app's audit log, when a database is in use."""
        return self._state().audit

    @property
    def tokens(self) -> TokenService:
        """The current app's :class:`TokenService`."""
        return self._state().tokens

    @property
    def nonces(self) -> NonceStore:
        """The current app's nonce store."""
        return self._state().nonces

    def close(self, app: Flask | None = None) -> None:
        """Close the stores the provider opened itself (for ``app``, or for every app).

        The nonce store, the managed keys' database and the audit log (what is
        queued for it is written first).
        """
        for target in [app] if app is not None else list(self._apps):
            state = self._state(target)
            if state.owns_nonces:
                state.nonces.close()
            if state.owns_keys:
                if state.keys.managed is not None:
                    state.keys.managed.close()
                elif state.audit is not None:
                    state.audit.close()
                    state.audit.db.dispose()

    # -- the blueprint -------------------------------------------------------------

    def _make_blueprint(self) -> Blueprint:
        bp = Blueprint(EXTENSION, __name__)

        @bp.before_request
        def preflight() -> ResponseReturnValue | None:
            """Every route answers CORS preflights (``OPTIONS``) the same way."""
            if request.method == "OPTIONS":
                return self._state().cors.preflight(request)
            return None

        @bp.route("/keys/<key_name>/requestToken", methods=ALL_METHODS)
        def request_token(key_name: str) -> ResponseReturnValue:
            state = self._state()
            allow(request, "POST")
            app = current_app._get_current_object()  # type: ignore[attr-defined]
            treq: TokenRequest | None = None
            try:
                body = _read_body(request, state.settings.max_body_bytes)
                treq = _token_request(body, key_name)
                issued = self._exchange(state, treq)
            except TokenReqError as exc:
                _audit("refused", key_name, None, None, exc.code)
                signals.token_refused.send(app, token_request=treq, key_name=key_name, error=exc)
                raise
            _audit("issued", issued.key_name, issued.client_id, issued.token_id, None)
            signals.token_issued.send(app, token_request=treq, token=issued)
            return ably_response(issued.token_details())

        @bp.route("/keys/<key_name>/revokeTokens", methods=ALL_METHODS)
        def revoke_tokens(key_name: str) -> ResponseReturnValue:
            """Ably's ``revokeTokens`` (DESIGN §7a), authenticated by the key it names."""
            state = self._state()
            allow(request, "POST")
            name, secret = _key_only(_credentials(request), "revokeTokens")
            if name != key_name:
                raise InvalidCredentials(
                    "revokeTokens must be authenticated with the key named in the URL"
                )
            _authenticate_key(state, name, secret)
            store = state.keys.for_change(key_name)
            body = _read_body(request, state.settings.max_body_bytes)
            if not isinstance(body, Mapping):
                raise InvalidBody(
                    'request body must be an object: {"targets": ["clientId:<id>"], ...}'
                )
            result = store.revoke_tokens(
                key_name,
                body.get("targets"),  # type: ignore[arg-type]  # checked by the store
                issued_before=body.get("issuedBefore"),
                allow_reauth_margin=_optional(body.get("allowReauthMargin"), False),
                actor=f"key:{key_name}",
            )
            return ably_response(result)

        @bp.route("/keys/<path:rest>", methods=ALL_METHODS)
        def unknown_key_path(rest: str) -> ResponseReturnValue:
            raise NotFound("Not found")

        @bp.route("/time", methods=ALL_METHODS)
        def time() -> ResponseReturnValue:
            state = self._state()
            allow(request, "GET", "HEAD")
            # msgpack when asked: ably-js rest.request() decodes by its own Accept.
            return ably_response([state.now()])

        @bp.route("/.well-known/jwks.json", methods=ALL_METHODS)
        def jwks() -> ResponseReturnValue:
            state = self._state()
            allow(request, "GET", "HEAD")
            if not state.tokens.asymmetric:
                raise NotFound("Not found: tokens are signed with a shared secret (HS256)")
            response = json_response(state.tokens.jwks())
            response.headers["Cache-Control"] = "public, max-age=300"
            del response.headers["Pragma"]
            return response

        @bp.after_request
        def cors_headers(response: Response) -> Response:
            with contextlib.suppress(InternalError):
                state = self._state()
                if state.cors:
                    state.cors.apply(request, response)
            return response

        ably_errors(bp)
        return bp

    # -- the exchange --------------------------------------------------------------

    def exchange(self, token_request: TokenRequest | Mapping[str, Any]) -> IssuedToken:
        """Exchange a TokenRequest for a token in-process (needs an app context).

        Runs every check the HTTP endpoint runs and raises the same errors.
        """
        state = self._state()
        if not isinstance(token_request, TokenRequest):
            key_name = token_request.get("keyName") if isinstance(token_request, Mapping) else None
            token_request = _token_request(
                token_request, key_name if isinstance(key_name, str) else ""
            )
        return self._exchange(state, token_request)

    def _exchange(self, state: _State, treq: TokenRequest) -> IssuedToken:
        settings = state.settings
        # 2. key known and active
        key = state.keys.get(treq.key_name)
        if key is None:
            raise InvalidCredentials(f"No key named {treq.key_name!r} is known")
        now = state.now()
        key.check_active(now)
        # 3. MAC, against the key's secrets newest first (a rotated key's old
        #    secret verifies during its grace period)
        if not any(verify_mac(treq, secret) for secret in key.verifying_secrets(now)):
            raise InvalidCredentials(
                "TokenRequest MAC does not match: sign with the key's secret and send the "
                "fields exactly as signed (ttl in milliseconds, capability not re-serialised)"
            )
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
            capability = Capability.parse(treq.capability).intersect(key.capability)
        if capability.is_empty():
            raise CapabilityNotPermitted(
                "Capability not permitted: the requested capability and the key's "
                "capability have nothing in common"
            )
        # 7. nonce, single use (only after the MAC passed)
        valid_until = treq.timestamp + settings.window_ms
        if not claim_nonce(state.nonces, treq.key_name, treq.nonce, valid_until, "TokenRequest"):
            raise NonceReplayed(
                "Nonce value replayed: each TokenRequest can be exchanged once; "
                "sign a new one (and never cache TokenRequests)"
            )
        # 8. mint
        expires = now + ttl
        if key.expires_at_ms is not None:
            expires = min(expires, key.expires_at_ms)
        issued = state.tokens.mint(
            key_name=treq.key_name,
            capability=capability,
            client_id=treq.client_id,
            issued_ms=now,
            expires_ms=expires,
        )
        state.keys.note_used(key)
        return issued

    # -- guarding views ------------------------------------------------------------

    def verify_token(self, token: str) -> Identity:
        """Verify a token (raw JWT) against the current app's keys and token revocations."""
        state = self._state()
        return state.tokens.verify(token, state.keys)

    def authenticate(self, req: Request | None = None, *, key_only: bool = False) -> Identity:
        """The :class:`Identity` of a request's credentials; raises a 401 error.

        ``Authorization: Bearer <jwt or base64 of it>``, or the key itself:
        ``Basic base64(keyName:secret)`` or ``Bearer appId.keyId:tkr_…`` (a
        managed key); and an optional ``X-Ably-ClientId``. With ``key_only``
        only the key itself passes: a token is refused (40162) unverified.
        """
        return self._authenticate(self._state(), request if req is None else req, key_only)

    def _authenticate(self, state: _State, req: Request, key_only: bool) -> Identity:
        """:meth:`authenticate` with the app's state already looked up."""
        credentials = _credentials(req)
        if key_only:
            credentials = _key_only(credentials, "This endpoint")
        if credentials is None:
            raise Unauthorized(
                "Authentication required: send 'Authorization: Bearer <token>' (or Basic key auth)"
            )
        if isinstance(credentials, str):
            token = _bearer_token(credentials, state.tokens.max_token_bytes)
            identity = state.tokens.verify(token, state.keys)
        else:
            key = _authenticate_key(state, *credentials)
            identity = Identity(
                key_name=key.key_name,
                client_id=None,
                capability=key.capability,
                expires_ms=key.expires_at_ms,
                kind="basic",
            )
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
        self,
        operation: str | None = None,
        resource: ResourceSpec = None,
        *,
        key_only: bool = False,
    ) -> Callable[[F], F]:
        """Decorator: the view runs only for a request whose credentials allow it.

        ``operation`` (e.g. ``"publish"``) must be granted on ``resource``:
        a literal channel name, a format string over the view's keyword
        arguments (``"{name}"`` or ``"chat:{room}"``) or a callable receiving
        them (``lambda name, **_: name``). Without ``resource`` the operation
        must be granted on some resource; without ``operation`` any valid
        credentials pass. ``key_only=True``: a server-to-server endpoint, for
        the key itself (``Basic``, or ``Bearer appId.keyId:tkr_…``); a token is
        refused with 40162, as ``revokeTokens`` does. The :class:`Identity` is
        put in ``flask.g.tokenreq``.
        Refusals are Ably errors (they render themselves), also on routes
        outside the blueprint. ``OPTIONS`` requests (CORS preflights) pass
        through unauthenticated. ``async def`` views work (``ensure_sync``).
        """
        resolve = _resource_resolver(resource)

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                # The request and the app once each, rather than through their
                # proxies at every use (a guarded request is a hot path).
                req: Request = request._get_current_object()  # type: ignore[attr-defined]
                app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
                if req.method != "OPTIONS":
                    g.tokenreq = self._authorize(app, req, operation, resolve, kwargs, key_only)
                return app.ensure_sync(view)(*args, **kwargs)

            return cast(F, wrapper)

        return decorator

    def _authorize(
        self,
        app: Flask,
        req: Request,
        operation: str | None,
        resolve: Callable[[Mapping[str, Any]], str | None],
        kwargs: Mapping[str, Any],
        key_only: bool,
    ) -> Identity:
        """The request's identity, checked against ``operation`` on the resolved resource."""
        try:
            identity = self._authenticate(self._state(app), req, key_only)
            if operation is not None:
                _check_capability(identity, operation, resolve(kwargs))
        except TokenReqError:
            raise
        except Exception:
            log.exception("unexpected error while checking credentials")
            raise InternalError() from None
        return identity


def current_identity() -> Identity | None:
    """The :class:`Identity` verified by ``require()`` for this request, if any."""
    identity = g.get("tokenreq")
    return identity if isinstance(identity, Identity) else None


# -- helpers ---------------------------------------------------------------------------


def claim_nonce(store: NonceStore, key_name: str, nonce: str, valid_until: int, what: str) -> bool:
    """Claim a nonce, failing closed: ``False`` when already claimed; any store failure
    is :class:`StoreUnavailable` (503, 50003) with the details in the log, not the answer.

    ``valid_until`` is the last millisecond at which this host would accept the
    request. The claim is kept :data:`NONCE_MARGIN_MS` longer: another host
    sharing the store whose clock is behind by up to that margin still accepts
    the request after this host's clock passed ``valid_until``, and must find
    the claim. The one path to the nonce store for TokenRequests and the key
    page's tickets.
    """
    try:
        return store.claim(key_name, nonce, valid_until + NONCE_MARGIN_MS)
    except StoreUnavailable as exc:
        log.error("nonce store unavailable; refusing the %s: %s", what, exc.message)
        raise StoreUnavailable() from None
    except Exception:
        log.exception("nonce store failed; refusing the %s", what)
        raise StoreUnavailable() from None


def request_fields() -> dict[str, str | None]:
    """The audit columns that describe the request: ``remote_addr``, ``request_id``."""
    if not has_request_context():
        return {"remote_addr": None, "request_id": None}
    return {
        "remote_addr": request.remote_addr,
        "request_id": request.headers.get("X-Request-Id"),
    }


def _read_body(req: Request, max_bytes: int) -> Any:
    """The request body parsed as JSON, or msgpack when sent as ``application/x-msgpack``."""
    raw = read_body(req, max_bytes)
    if not raw:
        raise InvalidBody("request body is empty: send a TokenRequest")
    return parse_msgpack(raw) if req.mimetype == MSGPACK else parse_json(raw)


def _token_request(body: Any, url_key_name: str) -> TokenRequest:
    """Step 1, shape: a well-formed TokenRequest for the key named in the URL."""
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
    return treq


def _time_path(settings: ProviderSettings) -> str:
    """Where ``GET /time`` is served (for error messages)."""
    if has_request_context() and EXTENSION in current_app.blueprints:
        with contextlib.suppress(BuildError):
            return url_for(f"{EXTENSION}.time")
    return f"{settings.url_prefix}/time"


def _open_keys(
    config: Mapping[str, Any], instance_path: str, clock: Clock, static_arg: Any
) -> tuple[KeyChain, AuditLog | None]:
    """The key chain and audit log the settings ask for.

    Static keys: ``static_arg`` or ``TOKENREQ_PROVIDER_KEYS``. Managed keys:
    with ``TOKENREQ_KEY_ENCRYPTION_KEYS``, in ``TOKENREQ_DATABASE_URL``
    (default: ``tokenreq.sqlite3`` in the instance folder). The database is
    "in use" with managed keys or an explicit ``TOKENREQ_DATABASE_URL``; only
    then is there an audit log (``TOKENREQ_AUDIT``).
    """
    static: KeyStore | None
    if static_arg is None:
        static = cfg.read(config, "TOKENREQ_PROVIDER_KEYS")
    elif isinstance(static_arg, (list, tuple)):
        static = StaticKeyStore.from_config(list(static_arg), setting="keys")
    else:
        static = static_arg
    encryption_keys = cfg.read(config, "TOKENREQ_KEY_ENCRYPTION_KEYS")
    url = cfg.read(config, "TOKENREQ_DATABASE_URL")
    audit_on = cfg.read(config, "TOKENREQ_AUDIT")
    retention = cfg.read(config, "TOKENREQ_AUDIT_RETENTION")
    if encryption_keys is None:
        chain = KeyChain(static, None)  # ConfigError without any keys
        if url is None:
            return chain, None
        from .audit import AuditLog

        audit = AuditLog(
            url,
            now_ms=clock,
            enabled=audit_on,
            retention_days=retention,
            instance_path=instance_path,
        )
        if audit_on:
            try:
                audit.create_tables()
            except StoreUnavailable:
                log.warning("audit log: the database %s is unavailable at start", audit.db.url)
        return chain, audit
    from .db import DEFAULT_SQLITE_FILENAME
    from .keys.sql import SqlKeyStore

    managed = SqlKeyStore(
        url or f"sqlite:///{DEFAULT_SQLITE_FILENAME}",
        encryption_keys,
        now_ms=clock,
        app_id=cfg.read(config, "TOKENREQ_APP_ID"),
        instance_path=instance_path,
        audit=audit_on,
        audit_retention_days=retention,
        reserved=None if static is None else (lambda name: static.get(name) is not None),
    )
    return KeyChain(static, managed), managed.audit


def _audit_exchanges(app: Flask, audit: AuditLog) -> None:
    """Write ``token.issued`` and ``token.refused`` audit rows from the exchange signals.

    Through :meth:`AuditLog.submit`: queued and written in batches, so an
    exchange does not wait for a durable write of its own.
    """

    def issued(sender: Flask, token_request: Any, token: IssuedToken, **extra: Any) -> None:
        audit.submit(
            "token.issued",
            key_name=token.key_name,
            client_id=token.client_id,
            detail={"jti": token.token_id, "expires": token.expires_ms},
            **request_fields(),
        )

    def refused(
        sender: Flask,
        token_request: TokenRequest | None,
        key_name: str,
        error: TokenReqError,
        **extra: Any,
    ) -> None:
        audit.submit(
            "token.refused",
            key_name=key_name,
            client_id=None if token_request is None else token_request.client_id,
            code=error.code,
            detail={"reason": error.message},
            **request_fields(),
        )

    signals.token_issued.connect(issued, sender=app, weak=False)
    signals.token_refused.connect(refused, sender=app, weak=False)


def _optional(value: Any, default: Any) -> Any:
    """A JSON or msgpack field: ``null`` counts as absent (ably-python sends nulls)."""
    return default if value is None else value


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


def _credentials(req: Request) -> tuple[str, bytes] | str | None:
    """What ``Authorization`` carries: the key as ``(key_name, secret)``, a bearer token
    (the header's value, not yet decoded), or ``None`` when there is no header.

    The key comes from ``Basic base64(keyName:secret)`` (Ably's key auth) or
    from ``Bearer appId.keyId:tkr_…`` (a managed key used server to server).
    """
    header = req.headers.get("Authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        if looks_like_managed_key(value):
            try:
                key_name, secret = parse_key(value)
            except ValueError:  # a character no key may hold (NUL, say)
                raise InvalidCredentials(
                    "Invalid credentials: key is malformed (it holds a character no key may "
                    "hold, such as NUL)"
                ) from None
            return key_name, secret.encode("utf-8")
        return value
    if scheme == "basic":
        return _basic_credentials(value)
    raise Unauthorized("Unsupported Authorization scheme: use Bearer or Basic")


def _key_only(credentials: tuple[str, bytes] | str | None, what: str) -> tuple[str, bytes]:
    """The key of :func:`_credentials`, where only the key itself may authenticate.

    No credentials: 40100. A bearer token: 40162 (Ably's "requires key
    authentication"), before the token is verified.
    """
    if credentials is None:
        raise Unauthorized(
            f"{what} needs the key itself: send 'Authorization: Basic base64(keyName:secret)'"
            " or 'Authorization: Bearer appId.keyId:tkr_…'"
        )
    if isinstance(credentials, str):
        raise TokenAuthNotAllowed(
            f"{what} needs the key itself (Basic, or Bearer with a managed key), not a token"
        )
    return credentials


def _basic_credentials(value: str) -> tuple[str, bytes]:
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
    return key_name, secret_bytes


def _authenticate_key(state: _State, key_name: str, secret: bytes) -> ApiKey:
    """The one authentication by a key's secret (Basic, Bearer key), static or managed.

    A ``tkr_`` secret whose checksum fails is refused before any lookup; then
    the key must be known, the secret one of its verifying secrets (constant
    time, newest first), and the key active (40131 revoked, 40132 expired).
    """
    if secret.startswith(SECRET_PREFIX.encode()) and not _well_formed(secret):
        raise InvalidCredentials(
            "Invalid credentials: key is malformed (its tkr_ secret fails the checksum: "
            "mistyped or truncated?)"
        )
    key = state.keys.get(key_name)
    if key is None:
        raise InvalidCredentials(f"No key named {key_name!r} is known")
    now = state.now()
    if not _secret_matches(key, secret, now):
        raise InvalidCredentials("Invalid credentials: wrong key secret")
    key.check_active(now)
    state.keys.note_used(key)
    return key


def _well_formed(secret: bytes) -> bool:
    try:
        return check_secret_format(secret.decode("ascii"))
    except UnicodeDecodeError:
        return False


def _secret_matches(key: ApiKey, candidate: bytes, now: int) -> bool:
    """Whether ``candidate`` is one of the key's verifying secrets (constant time each)."""
    return any(
        hmac.compare_digest(candidate, secret.encode("utf-8"))
        for secret in key.verifying_secrets(now)
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
