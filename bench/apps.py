"""The app `bench/run.py` loads under gunicorn: every measured route in one app.

``gunicorn --pythonpath bench 'apps:create_app()'``. The nonce store comes from
``TOKENREQ_NONCE_STORE`` (the bench starts one server per store). Routes:

- ``POST /login``: form field ``username``; sets the flask-login session cookie.
- ``GET /empty``: the baseline: checks ``current_user.is_authenticated``,
  answers a tiny JSON (same helper, same headers as the issuer's answers).
- ``GET /tokenreq/token``: the issuer (``TokenIssuer``), for the same session.
- ``POST /keys/<keyName>/requestToken``, ``GET /time``: the provider.
- ``GET /channels/<name>/unguarded`` and ``GET /channels/<name>/guarded``: the
  same handler; the second is wrapped in ``provider.require("subscribe", "{name}")``.

Development-only keys and secrets: this app only ever listens on 127.0.0.1.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, request
from flask_login import LoginManager, UserMixin, current_user, login_user

from flask_tokenreq import TokenIssuer, TokenProvider
from flask_tokenreq.errors import Unauthorized
from flask_tokenreq.http import json_response

KEY_NAME = "benchapp.benchkey"
KEY_SECRET = "bench-key-secret-0123456789abcdef0123456789abcdef"
KEY = f"{KEY_NAME}:{KEY_SECRET}"
#: What the provider's key may do (a scoped key, as in production).
KEY_CAPABILITY = {"*": ["history", "presence", "publish", "subscribe"]}
SIGNING_SECRET = "bench-token-signing-secret-0123456789abcdef012345"
SESSION_KEY = "bench-session-key-0123456789abcdef0123456789abcdef"
#: What each signed-in user may do (what the issuer's capability loader returns).
USER_CAPABILITY = {"*": ["publish", "subscribe", "history"]}
#: The capability the bench puts in the TokenRequests it exchanges.
REQUEST_CAPABILITY = {"chat:*": ["publish", "subscribe"], "status": ["subscribe"]}


def _sqlite_synchronous(mode: str) -> None:
    """Benchmark only: ``PRAGMA synchronous`` on every new SQLite connection.

    Not something the package offers: docs/performance.md measures what
    ``synchronous=NORMAL`` (no flush per commit in WAL mode) would change.
    """
    import sqlite3

    import sqlalchemy as sa

    if mode.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"BENCH_SQLITE_SYNCHRONOUS: unknown mode {mode!r}")

    @sa.event.listens_for(sa.engine.Engine, "connect")
    def set_synchronous(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute(f"PRAGMA synchronous = {mode.upper()}")


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("BENCH_INSTANCE_PATH") or None)
    app.config.update(
        SECRET_KEY=SESSION_KEY,
        TOKENREQ_KEY=KEY,
        TOKENREQ_PROVIDER_KEYS=[{"key": KEY, "capability": KEY_CAPABILITY}],
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
    )
    store = os.environ.get("TOKENREQ_NONCE_STORE")
    if store:
        app.config["TOKENREQ_NONCE_STORE"] = store
    synchronous = os.environ.get("BENCH_SQLITE_SYNCHRONOUS")
    if synchronous:
        _sqlite_synchronous(synchronous)
    app.config.update(overrides or {})

    add_session_routes(app)
    issuer = TokenIssuer(app)

    @issuer.client_id_loader
    def client_id(user: User) -> str:
        return str(user.id)

    @issuer.capability_loader
    def capability(user: User, req: object) -> dict[str, list[str]]:
        return USER_CAPABILITY

    provider = TokenProvider(app)
    add_channel_routes(app, provider)
    return app


def add_session_routes(app: Flask) -> None:
    """flask-login, ``POST /login`` and the baseline ``GET /empty`` (also keys_bench's)."""
    if not app.config.get("SECRET_KEY"):  # Flask's default is None
        app.config["SECRET_KEY"] = SESSION_KEY
    login = LoginManager(app)

    @login.user_loader
    def load_user(user_id: str) -> User | None:
        return User(user_id) if user_id.startswith("user-") else None

    @app.post("/login")
    def do_login() -> Response:
        username = request.form.get("username", "")
        if not username.startswith("user-"):
            raise Unauthorized("unknown user")
        login_user(User(username))
        return json_response({"user": username})

    @app.get("/empty")
    def empty() -> Response:
        if not current_user.is_authenticated:
            raise Unauthorized("Login required")
        return json_response({"ok": True})


def add_channel_routes(app: Flask, provider: TokenProvider) -> None:
    """``/channels/<name>/unguarded`` and ``/channels/<name>/guarded``: one handler,
    the second wrapped in ``provider.require("subscribe", "{name}")``."""

    def channel(name: str) -> Response:
        return json_response({"channel": name, "ok": True})

    app.add_url_rule("/channels/<name>/unguarded", "unguarded", channel)
    app.add_url_rule(
        "/channels/<name>/guarded", "guarded", provider.require("subscribe", "{name}")(channel)
    )
