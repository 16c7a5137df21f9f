"""What the seed-flow examples share: settings from the environment and a stand-in sign-in.

``archiva_app.py``, ``velt_app.py`` and ``react_ably/app.py`` each show one
flow users asked for. They read every ``TOKENREQ_*`` environment variable
(JSON-parsed) and ``FLASK_*`` ones (``FLASK_SECRET_KEY``) into ``app.config``;
what is missing falls back to development values, the same in every worker,
with a warning: never deploy those.

The sign-in stands in for your app's own: demo users with passwords in code
(a real app stores password hashes), ``POST /login`` (form or JSON:
``username``, ``password``) and ``POST /logout`` with flask-login. It keeps
the guards a copied sign-in needs: bounded bodies, a constant-time password
check, and no sign-in posted from another site's page (login CSRF).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, request
from flask_login import LoginManager, UserMixin, login_user, logout_user

from flask_tokenreq import settings
from flask_tokenreq.errors import BadRequest, Forbidden, Unauthorized, ably_errors

log = logging.getLogger(__name__)

#: Development-only values, the same in every worker process. Never deploy them.
DEV_VALUES = {
    "SECRET_KEY": "dev-only-seed-session-key-change-me-0123456789",
    "TOKENREQ_KEY": "seedapp.devkey:dev-only-seed-secret-0123456789abcdef0123",
    "TOKENREQ_SIGNING_SECRET": "dev-only-seed-token-signing-secret-0123456789abcdef",
}
#: Largest request body any seed example reads.
MAX_BODY = 64 * 1024


def configure(app: Flask, defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> None:
    """``defaults``, then the environment, then ``overrides``; development values last.

    Bodies are bounded (413 beyond :data:`MAX_BODY`) and every error, the
    app's own included, answers Ably's JSON error format.
    """
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, MAX_FORM_MEMORY_SIZE=MAX_BODY)
    app.config.update(defaults)
    settings.from_env(app.config)  # every TOKENREQ_* variable, JSON-parsed
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY -> SECRET_KEY
    app.config.update(overrides or {})
    for name, value in DEV_VALUES.items():
        if not app.config.get(name):
            log.warning("%s is not set: using a development value (never deploy it)", name)
            app.config[name] = value
    if not app.config.get("TOKENREQ_PROVIDER_KEYS"):
        # The issuer and the provider live in one app here: they share the key.
        app.config["TOKENREQ_PROVIDER_KEYS"] = [app.config["TOKENREQ_KEY"]]
    ably_errors(app)  # every error of the app answers in Ably's JSON format


class User(UserMixin):
    """A signed-in user: the username is the id; ``properties`` are the rest of its entry."""

    def __init__(self, user_id: str, properties: Mapping[str, Any]) -> None:
        self.id = user_id
        self.properties = properties


def add_signin(app: Flask, users: Mapping[str, Mapping[str, Any]]) -> None:
    """flask-login, ``POST /login`` and ``POST /logout`` for ``users``.

    ``users`` maps a username to its entry: ``password`` and any properties.
    """

    def user(name: str) -> User | None:
        entry = users.get(name)
        if entry is None:
            return None
        return User(name, {k: v for k, v in entry.items() if k != "password"})

    LoginManager(app).user_loader(user)

    @app.post("/login")
    def login() -> dict[str, Any]:
        _same_site_only()
        fields: Any = request.get_json(silent=True) if request.is_json else request.form
        if not isinstance(fields, Mapping):
            raise BadRequest("send the fields username and password")
        name, password = fields.get("username"), fields.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise BadRequest("username and password must be strings")
        expected = str(users.get(name, {}).get("password", ""))
        signed_in = user(name)
        # Always one comparison, so a wrong name takes as long as a wrong password.
        matches = hmac.compare_digest(password.encode(), expected.encode())
        if signed_in is None or not matches:
            raise Unauthorized("Wrong username or password")
        login_user(signed_in)
        return {"user": name}

    @app.post("/logout")
    def logout() -> dict[str, Any]:
        _same_site_only()
        logout_user()
        return {"user": None}


def _same_site_only() -> None:
    """Refuse a browser POST from another site (its ``Sec-Fetch-Site`` or ``Origin`` says so)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden("Sign-in is only accepted from this site's own pages")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Forbidden("Sign-in is only accepted from this site's own pages")
