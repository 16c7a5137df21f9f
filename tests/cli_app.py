"""An app for ``flask tokenreq ticket``: the example provider plus the key page (``KeyAdmin``).

``create_app`` takes the same arguments as ``examples.provider_app.create_app``,
so a test can build the same app in its own process and trade the ticket the
CLI printed.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from examples import provider_app
from flask_tokenreq import KeyAdmin


def create_app(overrides: dict[str, Any] | None = None, **kwargs: Any) -> Flask:
    app = provider_app.create_app(overrides, **kwargs)
    KeyAdmin(app)
    return app
