"""``KeyAdmin``: the key-management page, its ticket exchange and JSON API (DESIGN §7c).

It manages the keys of the app's :class:`~flask_tokenreq.TokenProvider`
(through the provider's :class:`~flask_tokenreq.keys.chain.KeyChain`, so the
CLI and the page make the same changes with the same checks), and uses the
provider's nonce store (single-use tickets), audit log and clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, request
from itsdangerous import URLSafeSerializer

from .. import extension
from ..errors import ConfigError, ably_errors
from ..provider import EXTENSION as PROVIDER_EXTENSION
from ..provider import TokenProvider, request_fields
from . import api, tickets, views
from . import session as sessions

if TYPE_CHECKING:  # pragma: no cover
    from ..provider import _State as ProviderState

__all__ = ["CSP", "DEFAULT_URL_PREFIX", "EXTENSION", "AdminState", "KeyAdmin"]

#: Where the extension registers itself (``cli.ADMIN_EXTENSION``); also the blueprint name.
EXTENSION = "tokenreq_admin"
DEFAULT_URL_PREFIX = "/tokenreq/admin"
#: The page's Content-Security-Policy: its own script and stylesheet, nothing inline.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass(slots=True)
class AdminState:
    """What the key page needs for one app, built at ``init_app``."""

    #: The URL prefix, without a trailing ``/`` (``""`` = the root).
    prefix: str
    #: The provider's per-app state: keys, nonce store, audit log, clock, settings.
    provider: ProviderState
    tickets: URLSafeSerializer
    sessions: URLSafeSerializer

    def now(self) -> int:
        """Milliseconds on the provider's (injectable) clock."""
        return self.provider.now()

    def audit(self, event: str, actor: str | None, *, durable: bool = True, **fields: Any) -> None:
        """Audit a ``ticket.*`` event as ``admin:<actor>`` with the request's address.

        ``durable``: written before this returns (a failure is 503); otherwise
        queued (refusals: a client can cause them at will, and they must not
        wait for the database). Without a database there is no audit log.
        """
        log = self.provider.audit
        if log is None:
            return
        who = None if actor is None else f"admin:{actor}"
        write = log.record if durable else log.submit
        write(event, actor=who, **request_fields(), **fields)


class KeyAdmin:
    """The key-management page of the provider's keys, gated by tickets the app issues.

    ``KeyAdmin(app, url_prefix="/tokenreq/admin")`` or ``init_app(app)`` later,
    after :class:`~flask_tokenreq.TokenProvider` (whose keys it manages) and
    with ``SECRET_KEY`` set (it signs tickets and session cookies):
    otherwise :class:`~flask_tokenreq.ConfigError`. The app decides who may
    manage keys and hands them :meth:`issue_ticket`'s ticket in a link to
    the page (``url_for("tokenreq_admin.page", ticket=...)``).
    """

    def __init__(self, app: Flask | None = None, *, url_prefix: str = DEFAULT_URL_PREFIX) -> None:
        if not isinstance(url_prefix, str) or (url_prefix and not url_prefix.startswith("/")):
            raise ConfigError(f"KeyAdmin url_prefix must start with '/', got {url_prefix!r}")
        self.url_prefix = url_prefix.rstrip("/")
        self.blueprint = self._make_blueprint()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Check the set-up (a provider, ``SECRET_KEY``) and register the page's blueprint."""
        provider = app.extensions.get(PROVIDER_EXTENSION)
        if not isinstance(provider, TokenProvider):
            raise ConfigError(
                "KeyAdmin manages the keys of the app's TokenProvider: create "
                "TokenProvider(app) before KeyAdmin(app)"
            )
        state = AdminState(
            prefix=self.url_prefix,
            provider=provider._state(app),
            tickets=tickets.serializer(app.config, tickets.SALT),
            sessions=tickets.serializer(app.config, sessions.SALT),
        )
        extension.register(app, EXTENSION, self, state)
        app.register_blueprint(self.blueprint, url_prefix=self.url_prefix or None)

    def _state(self, app: Flask | None = None) -> AdminState:
        return extension.state_of(self, EXTENSION, AdminState, app)

    def issue_ticket(
        self,
        actor: str,
        scopes: Sequence[str] = tickets.SCOPES,
        ttl: int = tickets.DEFAULT_TTL_MS,
    ) -> str:
        """A fresh single-use ticket for ``actor`` (audited ``ticket.issued``).

        Call it from your own route, after your own authorization, and send
        the user to ``url_for("tokenreq_admin.page", ticket=ticket)``.
        ``scopes``: ``keys:read`` (list, audit) and/or ``keys:write`` (create,
        rotate, revoke). ``ttl``: ms, 60 s by default, at most 10 minutes.
        Needs an app context; a bad argument is a :class:`ValueError`.
        """
        state = self._state()
        text, ticket = tickets.issue(state.tickets, actor, scopes, ttl, state.now())
        state.audit(
            "ticket.issued",
            ticket.actor,
            detail={"scopes": list(ticket.scopes), "expires": ticket.expires_ms},
        )
        return text

    def _make_blueprint(self) -> Blueprint:
        bp = Blueprint(
            EXTENSION,
            __name__,
            template_folder="templates",
            static_folder="static",
            static_url_path="/static",
        )
        views.register(bp, self._state)
        api.register(bp, self._state)

        @bp.after_request
        def security_headers(response: Response) -> Response:
            """Every answer: the CSP, no referrer (the page's URL has a ticket), no sniffing;
            nothing but the static files may be cached."""
            headers = response.headers
            headers.setdefault("Content-Security-Policy", CSP)
            headers.setdefault("Referrer-Policy", "no-referrer")
            headers.setdefault("X-Content-Type-Options", "nosniff")
            if request.endpoint != f"{EXTENSION}.static":
                headers["Cache-Control"] = "no-store"
            return response

        ably_errors(bp)
        return bp
