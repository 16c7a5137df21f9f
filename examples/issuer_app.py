"""Example: the token issuer behind a flask-login session.

Run ``python examples/issuer_app.py [--port 5000]`` or ``gunicorn
'examples.issuer_app:create_app()'``. Sign in with ``POST /login`` (form fields
``username``, ``password``), then ``GET /api/tokenreq/token``.

Demo users: ``alice`` / ``alice-password`` may publish, subscribe and read
history on every channel; ``bob`` / ``bob-password`` may only subscribe and
read history. The clientId is the username.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from flask_login import LoginManager, UserMixin, login_user, logout_user

if not __package__:  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_tokenreq import config
from flask_tokenreq.errors import Unauthorized
from flask_tokenreq.http import error_response, json_response
from flask_tokenreq.issuer import TokenIssuer

log = logging.getLogger(__name__)

#: Development-only values, the same in every worker process. Never deploy them.
DEV_SECRET_KEY = "dev-only-session-key-change-me-0123456789abcdef"
DEV_TOKENREQ_KEY = "devapp.devkey:dev-only-secret-0123456789abcdef0123456789"

# Demo users: password and what each may do on every channel. Demo only:
# real apps store password hashes.
USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("alice-password", ["publish", "subscribe", "history"]),
    "bob": ("bob-password", ["subscribe", "history"]),
}


class User(UserMixin):
    def __init__(self, username: str) -> None:
        self.id = username


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """The example app; ``overrides`` are applied to ``app.config`` last."""
    app = Flask(__name__)
    config.from_env(app.config)  # every TOKENREQ_* variable, JSON-parsed
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY -> SECRET_KEY
    app.config.update(overrides or {})
    if not app.config.get("SECRET_KEY"):
        log.warning("FLASK_SECRET_KEY is not set: using the development session key")
        app.config["SECRET_KEY"] = DEV_SECRET_KEY
    if not config.lookup(app.config, "TOKENREQ_KEY"):
        log.warning("TOKENREQ_KEY is not set: using a development key")
        app.config["TOKENREQ_KEY"] = DEV_TOKENREQ_KEY

    login = LoginManager(app)

    @login.user_loader
    def load_user(user_id: str) -> User | None:
        return User(user_id) if user_id in USERS else None

    issuer = TokenIssuer(app, url_prefix="/api/tokenreq")

    @issuer.client_id_loader
    def client_id(user: User) -> str:
        return str(user.id)

    @issuer.capability_loader
    def capability(user: User, req: object) -> dict[str, list[str]]:
        return {"*": USERS[user.id][1]}

    @app.post("/login")
    def do_login() -> Response:
        # Form fields (as documented) or a JSON object, e.g. from a script's fetch().
        fields = request.get_json(silent=True) if request.is_json else request.form
        if not isinstance(fields, Mapping):
            fields = {}
        username, password = fields.get("username", ""), fields.get("password", "")
        if not isinstance(username, str) or not isinstance(password, str):
            username, password = "", ""
        entry = USERS.get(username)
        expected = entry[0] if entry else "\0"
        ok = hmac.compare_digest(password.encode(), expected.encode()) and entry is not None
        if not ok:
            return error_response(Unauthorized("Wrong username or password"))
        login_user(User(username))
        return json_response({"user": username})

    @app.post("/logout")
    def do_logout() -> Response:
        logout_user()
        return json_response({"user": None})

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port_arg", nargs="?", type=int, metavar="port", help="same as --port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    create_app().run(host=args.host, port=args.port_arg or args.port)
