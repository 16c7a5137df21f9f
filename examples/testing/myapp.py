"""A small app that issues TokenRequests and guards its notes with tokens.

Signed-in users get TokenRequests from ``GET /auth/token``; the provider at
the root exchanges them for tokens (``POST /keys/<keyName>/requestToken``);
``/notes/<name>`` needs a token allowing ``history`` (read) or ``publish``
(write) on ``notes:<name>``. Editors may write, everyone else only read.
Sign-in is your app's own (flask-login); ``test_myapp.py`` tests it all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Request, request
from flask_login import LoginManager, UserMixin

from flask_tokenreq import TokenIssuer, TokenProvider, current_identity

EDITORS = {"alice"}


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})
    LoginManager(app).user_loader(User)

    issuer = TokenIssuer(app, url_prefix="/auth")
    provider = TokenProvider(app)

    @issuer.capability_loader
    def capability(user: User, req: Request) -> dict[str, list[str]]:
        if user.id in EDITORS:
            return {"notes:*": ["history", "publish"]}
        return {"notes:*": ["history"]}

    notes: dict[str, list[dict[str, Any]]] = {}

    @app.get("/notes/<name>")
    @provider.require("history", "notes:{name}")
    def read_notes(name: str) -> list[dict[str, Any]]:
        return notes.get(name, [])

    @app.post("/notes/<name>")
    @provider.require("publish", "notes:{name}")
    def write_note(name: str) -> tuple[dict[str, Any], int]:
        body = request.get_json(silent=True)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return {"error": 'send a JSON object {"text": "..."}'}, 400
        identity = current_identity()
        assert identity is not None  # require() verified the token
        note = {"text": text, "by": identity.client_id}
        notes.setdefault(name, []).append(note)
        return note, 201

    return app
