"""An app for ``flask tokenreq ticket``: the example provider plus a stand-in key page.

The real key page (``KeyAdmin``) comes with the next issue; until then this
stands in for the hook the CLI calls: ``app.extensions["tokenreq_admin"]``
with ``issue_ticket(actor, scopes)``, and a ``tokenreq_admin.page`` route.
Tickets here are not secrets of any real system: a fixed prefix and a count.
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import Blueprint, Flask, request

from examples import provider_app


class StandInAdmin:
    """What the CLI needs of a KeyAdmin: tickets, and a page to link them to."""

    def __init__(self, app: Flask) -> None:
        self.issued: list[tuple[str, tuple[str, ...]]] = []
        bp = Blueprint("tokenreq_admin", __name__)

        @bp.get("/")
        def page() -> str:
            return f"key page for ticket {request.args.get('ticket', '')}"

        app.register_blueprint(bp, url_prefix="/tokenreq/admin")
        app.extensions["tokenreq_admin"] = self

    def issue_ticket(self, actor: str, scopes: Sequence[str] = ("keys:read",)) -> str:
        self.issued.append((actor, tuple(scopes)))
        return f"stand-in-ticket-{len(self.issued)}-{actor}-{'+'.join(scopes)}"


def create_app() -> Flask:
    app = provider_app.create_app()
    StandInAdmin(app)
    return app
