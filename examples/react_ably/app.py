"""Ably's "Vite + React" article flows: real ably-js in the browser, flask-tokenreq as the server.

The article gets ably-js its tokens two ways; this page does both, with the
real ably-js browser bundle served from this app (no build step, no CDN):

- ``?flow=authUrl``: ``new Ably.Rest({authUrl: '/api/ably/token'})``; ably-js
  GETs the route (the session cookie goes along) and receives a TokenRequest
  signed for the signed-in user;
- ``?flow=authCallback``: the page fetches the same route itself and hands
  the TokenRequest to ably-js in an ``authCallback``.

Either way ably-js exchanges the TokenRequest at this app's provider
(``POST /keys/<keyName>/requestToken``, the app is the ably-js ``endpoint``)
and publishes to and reads the history of a channel
(``/channels/<name>/messages``, from ``examples/provider_app.py``). The page
calls ``rest.time()`` once, so ably-js knows the server's time and gets a new
token through the same flow when the old one expires, before using it. A
refusal is shown with its Ably code (``bob`` may not publish: 40160).

ably-js comes from ``tests/interop/node_modules/ably`` (``make node``), or
from the file ``FLASK_ABLY_JS`` names. Run ``python -m examples.react_ably.app
[--port 5000]`` and sign in as ``alice`` / ``alice-password`` (publish,
subscribe, history) or ``bob`` / ``bob-password`` (subscribe, history).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, render_template, send_file
from flask_login import current_user

from examples.provider_app import MessageStore, channels_blueprint
from examples.seed import User, add_sign_in, configure, serve, username
from flask_tokenreq import TokenIssuer, TokenProvider
from flask_tokenreq.errors import NotFound

ROOT = Path(__file__).resolve().parent.parent.parent
#: The browser build of the ably npm package that `make node` installs.
ABLY_JS = ROOT / "tests" / "interop" / "node_modules" / "ably" / "build" / "ably.js"


def create_app(
    overrides: Mapping[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """The example; ``overrides`` are applied to ``app.config`` last."""
    app = Flask(__name__, instance_path=instance_path)
    configure(app, {"ABLY_JS": str(ABLY_JS)}, overrides)
    add_sign_in(app)

    issuer = TokenIssuer(app, url_prefix="/api/ably")  # GET /api/ably/token
    issuer.client_id_loader(username)

    @issuer.capability_loader
    def capability(user: User, request: Request) -> dict[str, list[str]]:
        return {"*": user.operations}  # alice: publish, subscribe, history; bob: no publish

    provider = TokenProvider(app)  # at the root: ably-js's endpoint is this app
    database = app.config.get("TOKENREQ_MESSAGES_DATABASE")
    if not database:
        os.makedirs(app.instance_path, exist_ok=True)
        database = "sqlite:///" + os.path.join(app.instance_path, "react-ably-messages.sqlite3")
    app.register_blueprint(channels_blueprint(provider, MessageStore(database)))

    @app.get("/")
    def index() -> str:
        user = current_user.username if current_user.is_authenticated else None
        return render_template("index.html", user=user)

    @app.get("/vendor/ably.js")
    def ably_js() -> Response:
        path = Path(app.config["ABLY_JS"])
        if not path.is_file():
            raise NotFound("ably-js is not installed: run `make node`, or set FLASK_ABLY_JS")
        return send_file(path, mimetype="text/javascript", max_age=0)

    return app


if __name__ == "__main__":
    serve(create_app, __doc__)
