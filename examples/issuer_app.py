"""Example: the token issuer behind a flask-login session.

Run ``python examples/issuer_app.py [--port 5000]`` (or ``make examples``,
which also starts the provider on :5001), or ``gunicorn
'examples.issuer_app:create_app()'``. Sign in with ``POST /login`` (form
fields ``username`` and ``password``, or a JSON object; a session cookie),
then ``GET /api/tokenreq/token``. ``POST /logout`` ends the session.

Demo users: ``alice`` / ``alice-password`` may publish, subscribe and read
history on every channel; ``bob`` / ``bob-password`` may only subscribe and
read history; ``carol`` / ``carol-password`` may do what alice may. The
clientId is the username.

Sign-in is hardened as a real app's should be (bounded bodies, login CSRF
check, rate limit, server-side sessions, cookie flags): see
:mod:`examples.accounts` and ``docs/examples.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

if not __package__:  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.accounts import SignIn, User, apply_defaults
from flask_tokenreq import settings
from flask_tokenreq.clock import Clock
from flask_tokenreq.clock import now_ms as wall_clock
from flask_tokenreq.errors import ably_errors
from flask_tokenreq.http import json_response
from flask_tokenreq.issuer import TokenIssuer

log = logging.getLogger(__name__)

#: Development-only values, the same in every worker process. Never deploy them.
DEV_SECRET_KEY = "dev-only-session-key-change-me-0123456789abcdef"
DEV_TOKENREQ_KEY = "devapp.devkey:dev-only-secret-0123456789abcdef0123456789"


def create_app(
    overrides: Mapping[str, Any] | None = None,
    *,
    instance_path: str | None = None,
    now_ms: Clock = wall_clock,
) -> Flask:
    """The example app; ``overrides`` are applied to ``app.config`` last.

    ``now_ms`` is the clock of the issuer and of the sign-in sessions.
    """
    app = Flask(__name__, instance_path=instance_path)
    apply_defaults(app)  # bounded bodies, cookie flags, sign-in limits
    settings.from_env(app.config)  # every TOKENREQ_* variable, JSON-parsed
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY -> SECRET_KEY, FLASK_LOGIN_RATE_LIMIT, ...
    app.config.update(overrides or {})
    if not app.config.get("SECRET_KEY"):
        log.warning("FLASK_SECRET_KEY is not set: using the development session key")
        app.config["SECRET_KEY"] = DEV_SECRET_KEY
    if not app.config.get("TOKENREQ_KEY"):
        log.warning("TOKENREQ_KEY is not set: using a development key")
        app.config["TOKENREQ_KEY"] = DEV_TOKENREQ_KEY

    sign_in = SignIn(app, now_ms=now_ms)
    issuer = TokenIssuer(app, url_prefix="/api/tokenreq", now_ms=now_ms)

    @issuer.client_id_loader
    def client_id(user: User) -> str:
        return user.username

    @issuer.capability_loader
    def capability(user: User, req: object) -> dict[str, list[str]]:
        return {"*": user.operations}

    @app.post("/login")
    @sign_in.guard
    def do_login() -> Response:
        user = sign_in.sign_in(sign_in.credentials())
        return json_response({"user": user.username})

    @app.post("/logout")
    @sign_in.guard
    def do_logout() -> Response:
        sign_in.sign_out()
        return json_response({"user": None})

    @app.get("/")
    def index() -> Response:
        return json_response(
            {
                "signIn": "POST /login (username, password)",
                "token": request.host_url + "api/tokenreq/token",
                "signOut": "POST /logout",
            }
        )

    ably_errors(app)  # 404, 405, 413, 429 and crashes as Ably error JSON, never HTML
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port_arg", nargs="?", type=int, metavar="port", help="same as --port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    port = args.port if args.port_arg is None else args.port_arg
    create_app().run(host=args.host, port=port)
