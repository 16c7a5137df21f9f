"""What the seed-flow examples share: settings from the environment and the examples' sign-in.

``archiva_app.py``, ``velt_app.py``, ``trivial_app.py`` and
``react_ably/app.py`` each show one flow users asked for. They read every
``TOKENREQ_*`` environment variable (JSON-parsed) and ``FLASK_*`` ones
(``FLASK_SECRET_KEY``) into ``app.config``; what is missing falls back to
development values, the same in every worker, with a warning: never deploy
those. Every error answers Ably's JSON format.

Sign-in is the other examples' (:mod:`examples.accounts`: bounded bodies,
login CSRF check, rate limit, server-side sessions): ``POST /login`` (form or
JSON: ``username``, ``password``) and ``POST /logout``, for the demo users
``alice`` / ``alice-password``, ``bob`` / ``bob-password`` and ``carol`` /
``carol-password``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response

from examples.accounts import SignIn, User, apply_defaults
from flask_tokenreq import settings
from flask_tokenreq.errors import ably_errors
from flask_tokenreq.http import json_response

__all__ = ["DEV_VALUES", "User", "add_sign_in", "configure", "serve", "username"]

log = logging.getLogger(__name__)

#: Development-only values, the same in every worker process. Never deploy them.
DEV_VALUES = {
    "SECRET_KEY": "dev-only-seed-session-key-change-me-0123456789",
    "TOKENREQ_KEY": "seedapp.devkey:dev-only-seed-secret-0123456789abcdef0123",
    "TOKENREQ_SIGNING_SECRET": "dev-only-seed-token-signing-secret-0123456789abcdef",
}


def configure(
    app: Flask,
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any] | None,
    *,
    dev_values: Mapping[str, Any] = DEV_VALUES,
) -> None:
    """The sign-in's safe defaults and ``defaults``, then the environment, then ``overrides``.

    What is still missing of ``dev_values`` gets its development value, with a
    warning. An app with an issuer (``TOKENREQ_KEY`` among them) and no
    ``TOKENREQ_PROVIDER_KEYS`` has its provider share the issuer's key.
    """
    apply_defaults(app)  # bounded bodies, cookie flags, sign-in limits
    app.config.update(defaults)
    settings.from_env(app.config)  # every TOKENREQ_* variable, JSON-parsed
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY -> SECRET_KEY
    app.config.update(overrides or {})
    for name, value in dev_values.items():
        if not app.config.get(name):
            log.warning("%s is not set: using a development value (never deploy it)", name)
            app.config[name] = value
    if "TOKENREQ_KEY" in dev_values and not app.config.get("TOKENREQ_PROVIDER_KEYS"):
        # The issuer and the provider live in one app here: they share the key.
        app.config["TOKENREQ_PROVIDER_KEYS"] = [app.config["TOKENREQ_KEY"]]
    ably_errors(app)  # every error of the app answers in Ably's JSON format


def add_sign_in(app: Flask) -> SignIn:
    """``POST /login`` and ``POST /logout`` (:mod:`examples.accounts`)."""
    sign_in = SignIn(app)

    @app.post("/login")
    @sign_in.guard
    def login() -> Response:
        user = sign_in.sign_in(sign_in.credentials())
        return json_response({"user": user.username})

    @app.post("/logout")
    @sign_in.guard
    def logout() -> Response:
        sign_in.sign_out()
        return json_response({"user": None})

    return sign_in


def username(user: User) -> str:
    """The clientId of a user: the username (flask-login knows users by a session id).

    Register it with ``issuer.client_id_loader(username)``.
    """
    return user.username


def serve(create_app: Callable[[], Flask], doc: str | None) -> None:
    """``python examples/<flow>_app.py [--host H] [--port 5000]``: the example, served."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    create_app().run(host=args.host, port=args.port)
