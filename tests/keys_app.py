"""A provider app for the gunicorn tests, configured by ``TOKENREQ_*`` variables only.

``gunicorn 'tests.keys_app:create_app()'``: the provider at the root and
``GET /rooms/<room>`` guarded by ``provider.require("subscribe", "{room}")``.
Every answer (refusals too) carries ``X-Worker-Pid``, so a test can tell
which worker process answered.
"""

from __future__ import annotations

import os

from flask import Flask, Response, g

from flask_tokenreq import TokenProvider, settings


def create_app() -> Flask:
    app = Flask(__name__)
    settings.from_env(app.config)
    provider = TokenProvider(app)

    @app.get("/rooms/<room>")
    @provider.require("subscribe", "{room}")
    def room(room: str) -> dict[str, str]:
        return {"room": room, "keyName": g.tokenreq.key_name}

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app
