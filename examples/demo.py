"""The whole flow in one process: login, issuer, provider, channels, a browser page.

Run ``make demo`` (or ``python examples/demo.py --port 5000``) and open the URL
it prints. Layout:

- ``/``, ``/login``, ``/logout``: the app (a page, a session cookie via flask-login);
- ``/api/tokenreq/token`` and ``/api/tokenreq/tokenreq.js``: the issuer, which
  signs TokenRequests for the signed-in user, and the browser helper;
- ``/provider/keys/<keyName>/requestToken``, ``/provider/time``: the provider
  (``TOKENREQ_PROVIDER_URL_PREFIX``, default ``/provider``), and
  ``/provider/channels/<name>/messages``: the channel resource it guards.

The page gets a token with ``tokenreq.js``, shows its clientId, capability and
time left, publishes and lists events, and says clearly when the provider
refuses an action (bob may not publish).

Key management (``KeyAdmin``, at ``/tokenreq/admin``): the app decides who may
manage keys. carol may: her page links to ``GET /manage-keys``, which issues a
single-use ticket on the server and redirects her to the key page; alice and
bob see no link, and ``/manage-keys`` answers them 403.

Everything is on SQLite in the instance folder (nonces, messages, managed
keys). Without ``TOKENREQ_KEY`` the issuer signs with a managed key, "Demo
key" (``flask --app examples.demo:create_app tokenreq keys list`` shows it),
encrypted under ``TOKENREQ_KEY_ENCRYPTION_KEYS`` or, when that is not set, a
development encryption key kept in the instance folder. Without
``TOKENREQ_SIGNING_SECRET`` or ``FLASK_SECRET_KEY`` it uses development values.
Every development value is logged as a warning: never deploy those. Every
``TOKENREQ_*`` environment variable is read (JSON-parsed). Demo settings:

- ``TOKENREQ_TTL``: the issuer's token ttl (ms, default 60 min); a page may ask
  for less with ``/?ttl=<ms>``.
- ``TOKENREQ_DEMO_PROVIDER_URL``: where the page finds the provider when it runs
  on another origin (e.g. ``http://localhost:5001/provider``); that provider
  must list this page's origin in ``TOKENREQ_PROVIDER_CORS_ORIGINS``.
- ``TOKENREQ_DEMO_POLL_MS``: how often the page refreshes the event list
  (default 5000; ``0`` = only on demand).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from flask import Flask, Response, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

if not __package__:  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.accounts import SignIn, User, apply_defaults
from examples.provider_app import (
    DEV_SIGNING_SECRET,
    MessageStore,
    channels_blueprint,
    development_encryption_key,
    development_managed_key,
    example_setting,
)
from flask_tokenreq import KeyAdmin, settings
from flask_tokenreq.clock import Clock
from flask_tokenreq.clock import now_ms as wall_clock
from flask_tokenreq.errors import ConfigError, Forbidden, TokenReqError, from_http_exception
from flask_tokenreq.http import Cors
from flask_tokenreq.issuer import TokenIssuer
from flask_tokenreq.provider import CORS_HEADERS, TokenProvider

log = logging.getLogger("examples.demo")

HERE = Path(__file__).resolve().parent
#: Default instance folder (nonce store, messages, sessions): ``instance/`` in the checkout.
DEFAULT_INSTANCE = HERE.parent / "instance"
ISSUER_PREFIX = "/api/tokenreq"
DEFAULT_PROVIDER_PREFIX = "/provider"
DEFAULT_POLL_MS = 5000
#: A development session key, the same in every worker process. Never deploy it.
DEV_SECRET_KEY = "dev-only-demo-session-key-0123456789abcdef"
#: Shown on the sign-in page and printed at start-up.
DEMO_LOGINS = (
    ("alice", "alice-password", "may publish, subscribe and read history"),
    ("bob", "bob-password", "may only subscribe and read history: publishing is refused"),
    ("carol", "carol-password", "may publish, subscribe and read history, and manage the API keys"),
)
#: Where the key-management page is mounted.
ADMIN_PREFIX = "/tokenreq/admin"
#: Sign-in and sign-out answer with the page (HTML), not with Ably error JSON.
FORM_ENDPOINTS = frozenset({"do_login", "do_logout"})


def create_app(
    overrides: Mapping[str, Any] | None = None,
    *,
    instance_path: str | os.PathLike[str] | None = None,
    now_ms: Clock = wall_clock,
) -> Flask:
    """The demo app; ``overrides`` are applied to ``app.config`` last.

    ``now_ms`` is the clock of the issuer, the provider, the message store
    and the sign-in sessions (tests inject a fake one to expire tokens
    without waiting).
    """
    app = Flask(__name__, instance_path=str(instance_path or DEFAULT_INSTANCE))
    apply_defaults(app)  # bounded bodies, cookie flags, sign-in limits
    settings.from_env(app.config)  # every TOKENREQ_* variable, JSON-parsed
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY -> SECRET_KEY, FLASK_LOGIN_RATE_LIMIT, ...
    app.config.update(overrides or {})
    _development_defaults(app)
    app.config.setdefault("TOKENREQ_PROVIDER_URL_PREFIX", DEFAULT_PROVIDER_PREFIX)
    os.makedirs(app.instance_path, exist_ok=True)

    # -- the app: users and sessions (examples/accounts.py) ---------------------------
    sign_in = SignIn(app, now_ms=now_ms)

    # -- the issuer: signs TokenRequests for the signed-in user ---------------------
    issuer = TokenIssuer(app, url_prefix=ISSUER_PREFIX, now_ms=now_ms)

    @issuer.client_id_loader
    def client_id(user: User) -> str:
        return user.username

    @issuer.capability_loader
    def capability(user: User, req: object) -> dict[str, list[str]]:
        return {"*": user.operations}

    # -- the provider and the channel resource it guards ------------------------------
    provider = TokenProvider(app, now_ms=now_ms)  # at TOKENREQ_PROVIDER_URL_PREFIX
    provider_prefix = _provider_prefix(app)
    database = example_setting(app, "TOKENREQ_MESSAGES_DATABASE", settings.string, None)
    if not database:
        database = "sqlite:///" + os.path.join(app.instance_path, "demo-messages.sqlite3")
    store = MessageStore(database)
    app.extensions["demo_messages"] = store
    cors = Cors(settings.read(app.config, "TOKENREQ_PROVIDER_CORS_ORIGINS"), headers=CORS_HEADERS)
    app.register_blueprint(
        channels_blueprint(provider, store, cors=cors, now_ms=now_ms),
        url_prefix=provider_prefix or None,
    )

    # -- key management: the app's RBAC decides who gets a ticket ------------------------
    admin = KeyAdmin(app, url_prefix=ADMIN_PREFIX)

    @app.get("/manage-keys")
    def manage_keys() -> BaseResponse:
        """A fresh single-use ticket for a user who may manage keys, then the key page."""
        if not current_user.is_authenticated:
            return redirect(url_for("index"), code=303)
        if not current_user.manages_keys:
            raise Forbidden(f"{current_user.username} may not manage the API keys")
        ticket = admin.issue_ticket(current_user.username)
        response = redirect(url_for("tokenreq_admin.page", ticket=ticket), code=303)
        response.headers["Cache-Control"] = "no-store"  # the ticket is in the Location
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    # -- the page ---------------------------------------------------------------------
    provider_url = (
        example_setting(app, "TOKENREQ_DEMO_PROVIDER_URL", settings.string, None) or provider_prefix
    )
    provider_url = provider_url.rstrip("/")
    provider_origin = _origin(provider_url)
    poll_ms = example_setting(
        app, "TOKENREQ_DEMO_POLL_MS", settings.integer(minimum=0, unit="ms"), DEFAULT_POLL_MS
    )

    def page(next_url: str, error: str | None = None, status: int = 200) -> Response:
        page_settings = {
            "authUrl": url_for("tokenreq_issuer.token"),
            "providerUrl": provider_url,
            "pollMs": poll_ms,
            "user": current_user.username if current_user.is_authenticated else None,
            "managesKeys": current_user.is_authenticated and current_user.manages_keys,
            "signInUrl": url_for("index"),
        }
        html = render_template(
            "demo.html",
            settings=page_settings,
            error=error,
            logins=DEMO_LOGINS,
            provider_url=provider_url,
            issuer_prefix=ISSUER_PREFIX,
            next_url=_safe_next(next_url),
        )
        response = Response(html, status=status, mimetype="text/html")
        connect = " ".join(["'self'", *([provider_origin] if provider_origin else [])])
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; connect-src {connect}; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'; object-src 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index() -> Response:
        return page(request.full_path if request.query_string else "/")

    @app.post("/login")
    @sign_in.guard
    def do_login() -> BaseResponse:
        credentials = sign_in.credentials()
        next_url = credentials.fields.get("next")
        try:
            sign_in.sign_in(credentials)
        except TokenReqError:
            back = next_url if isinstance(next_url, str) else "/"
            return page(back, error="Wrong username or password.", status=401)
        return redirect(_safe_next(next_url if isinstance(next_url, str) else None), code=303)

    @app.get("/login")
    def login_page() -> BaseResponse:
        return redirect(url_for("index"))

    @app.post("/logout")
    @sign_in.guard
    def do_logout() -> BaseResponse:
        next_url = sign_in.fields().get("next")
        sign_in.sign_out()
        return redirect(_safe_next(next_url if isinstance(next_url, str) else None), code=303)

    # Errors: the sign-in form shows them on the page; under the provider prefix
    # they are Ably errors (JSON); elsewhere werkzeug's usual pages.
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> BaseResponse | HTTPException:
        error = from_http_exception(exc)
        if request.endpoint in FORM_ENDPOINTS:
            return page("/", error=f"{error.message} ({error.code})", status=error.status)
        if provider_prefix and request.path.startswith(provider_prefix + "/"):
            return cors.apply(request, cast(Response, error.get_response()))
        return exc

    return app


def _provider_prefix(app: Flask) -> str:
    """Where the provider is mounted (``TOKENREQ_PROVIDER_URL_PREFIX``, validated)."""
    prefix: str = settings.read(app.config, "TOKENREQ_PROVIDER_URL_PREFIX") or ""
    return prefix.rstrip("/")


def _development_defaults(app: Flask) -> None:
    """Development keys when none are configured, with a warning for each."""
    conf = app.config
    if not conf.get("SECRET_KEY"):
        log.warning("FLASK_SECRET_KEY is not set: using the development session key")
        conf["SECRET_KEY"] = DEV_SECRET_KEY
    if not conf.get("TOKENREQ_KEY") and not conf.get("TOKENREQ_KEY_ENCRYPTION_KEYS"):
        # Managed keys out of the box (see docs/keys.md).
        conf["TOKENREQ_KEY_ENCRYPTION_KEYS"] = [development_encryption_key(app.instance_path)]
    if not conf.get("TOKENREQ_KEY_ENCRYPTION_KEYS"):
        if not conf.get("TOKENREQ_PROVIDER_KEYS"):  # static keys: the issuer's key
            conf["TOKENREQ_PROVIDER_KEYS"] = [conf["TOKENREQ_KEY"]]
    elif not conf.get("TOKENREQ_KEY"):
        conf["TOKENREQ_KEY"] = development_managed_key(conf, app.instance_path)
    if not conf.get("TOKENREQ_SIGNING_SECRET"):
        log.warning("TOKENREQ_SIGNING_SECRET is not set: using a development value")
        conf["TOKENREQ_SIGNING_SECRET"] = DEV_SIGNING_SECRET


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute URL; ``None`` for a path."""
    parts = urlsplit(url)
    if not parts.scheme:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("TOKENREQ_DEMO_PROVIDER_URL must be an http(s) URL or a path")
    return f"{parts.scheme}://{parts.netloc}"


def _safe_next(target: str | None) -> str:
    """A local path to go back to after signing in or out; anything else is ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target.rstrip("?") or "/"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="flask-tokenreq demo: " + __doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app()
    host = f"[{args.host}]" if ":" in args.host else args.host
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else host
    prefix = _provider_prefix(app)
    lines = [
        "",
        "flask-tokenreq demo",
        f"  Open http://{shown}:{args.port}/",
        "  Demo logins:",
        *(f"    {name} / {password}  ({what})" for name, password, what in DEMO_LOGINS),
        f"  App /   Issuer {ISSUER_PREFIX}/token   Provider {prefix or '/'}",
        f"  Key management: sign in as carol, then 'Manage keys' ({ADMIN_PREFIX}/)",
        f"  Data (SQLite): {app.instance_path}",
        "  Tip: /?ttl=20000 asks for 20 s tokens, to watch them renew.",
        "",
    ]
    print("\n".join(lines), flush=True)
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
