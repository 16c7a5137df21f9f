"""Velt's "JWT from your backend": the user's properties in a token only the server signs.

``POST /api/velt/token?format=jwt`` (with ``Accept: application/json``)
answers ``{"token", "expires", ...}``. The endpoint checks the session
first (401 without one), then puts the signed-in user's properties in the
token as claims: ``userId``, ``organizationId``, ``email``, ``name``,
``isAdmin``. Nothing about who the user is comes from the request body: a
body naming another user or organization changes nothing, and a ``clientId``
other than the user's own is refused (403, 40102). ::

    @issuer.claims_loader
    def properties(user):
        return {"userId": user.username, "organizationId": ..., "email": ..., "isAdmin": ...}

The API (``/api/documents/<doc>/comments``) accepts the token, reads those
properties from ``g.tokenreq.claims`` and lets a user see the documents of
their own organization only (403 otherwise).

Run ``python examples/velt_app.py [--port 5000]`` and sign in with
``POST /login`` as ``alice`` / ``alice-password`` (org-1, admin),
``bob`` / ``bob-password`` (org-2) or ``carol`` / ``carol-password`` (org-1).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, g, request

if not __package__:  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.seed import User, add_sign_in, configure, serve, username
from flask_tokenreq import TokenIssuer, TokenProvider
from flask_tokenreq.errors import BadRequest, Forbidden, NotFound

#: The properties of each demo user (examples/accounts.py).
PROPERTIES = {
    "alice": {
        "name": "Alice",
        "email": "alice@example.com",
        "organizationId": "org-1",
        "isAdmin": True,
    },
    "bob": {
        "name": "Bob",
        "email": "bob@example.com",
        "organizationId": "org-2",
        "isAdmin": False,
    },
    "carol": {
        "name": "Carol",
        "email": "carol@example.com",
        "organizationId": "org-1",
        "isAdmin": False,
    },
}
#: document -> the organization it belongs to
DOCUMENTS = {"roadmap": "org-1", "budget": "org-2"}


def create_app(
    overrides: Mapping[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """The example; ``overrides`` are applied to ``app.config`` last."""
    app = Flask(__name__, instance_path=instance_path)
    configure(
        app,
        {
            "TOKENREQ_ISSUER_CAPABILITY": {"documents:*": ["subscribe", "history", "publish"]},
            "TOKENREQ_PROVIDER_URL_PREFIX": "/api/provider",
        },
        overrides,
    )
    add_sign_in(app)

    issuer = TokenIssuer(app, url_prefix="/api/velt")  # POST /api/velt/token?format=jwt
    issuer.client_id_loader(username)

    @issuer.claims_loader
    def properties(user: User) -> dict[str, Any]:
        # From the signed-in user (the session), never from the request.
        p = PROPERTIES[user.username]
        return {
            "userId": user.username,
            "organizationId": p["organizationId"],
            "email": p["email"],
            "name": p["name"],
            "isAdmin": p["isAdmin"],
        }

    provider = TokenProvider(app)  # verifies the issuer's JWTs on the API below
    comments: dict[str, list[dict[str, Any]]] = {}

    def document_of_my_organization(doc: str) -> str:
        organization = DOCUMENTS.get(doc)
        if organization is None:
            raise NotFound(f"No document {doc!r}")
        if organization != g.tokenreq.claims.get("organizationId"):
            raise Forbidden("This document belongs to another organization")
        return doc

    @app.get("/api/documents/<doc>/comments")
    @provider.require("history", "documents:{doc}")
    def read_comments(doc: str) -> dict[str, Any]:
        document_of_my_organization(doc)
        claims = g.tokenreq.claims
        return {
            "document": doc,
            "viewer": {k: claims[k] for k in ("userId", "name", "isAdmin")},
            "comments": comments.get(doc, []),
        }

    @app.post("/api/documents/<doc>/comments")
    @provider.require("publish", "documents:{doc}")
    def add_comment(doc: str) -> tuple[dict[str, Any], int]:
        document_of_my_organization(doc)
        body = request.get_json(silent=True)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise BadRequest('send a JSON object {"text": "..."}')
        claims = g.tokenreq.claims  # the author is the token's, whatever the body says
        comment = {"text": text, "author": claims["name"], "email": claims["email"]}
        comments.setdefault(doc, []).append(comment)
        return comment, 201

    return app


if __name__ == "__main__":
    serve(create_app, __doc__)
