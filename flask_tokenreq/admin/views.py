"""The page and the ticket exchange: ``GET <prefix>/`` and
``GET <prefix>/session/ticket/exchange?ticket=…``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from ..http import ALL_METHODS, allow, json_response
from . import session as sessions
from . import tickets

if TYPE_CHECKING:  # pragma: no cover
    from .extension import AdminState

__all__ = ["register"]


def register(bp: Blueprint, state_of: Callable[[], AdminState]) -> None:
    """Add the page and the exchange to the key page's blueprint."""

    @bp.route("/", methods=ALL_METHODS)
    def page() -> ResponseReturnValue:
        """Always the page (its script trades the ticket or shows the access gate)."""
        allow(request, "GET", "HEAD")
        return render_template("tokenreq_admin/page.html", prefix=state_of().prefix)

    @bp.route("/session/ticket/exchange", methods=ALL_METHODS)
    def exchange() -> ResponseReturnValue:
        """Trade a ticket for a session cookie, once; 401 saying why not."""
        allow(request, "GET")
        state = state_of()
        now = state.now()
        try:
            ticket = tickets.redeem(
                state.tickets, request.args.get("ticket"), now, state.provider.nonces
            )
        except tickets.TicketRefused as exc:
            state.audit(
                "ticket.refused",
                exc.actor,
                durable=False,
                code=exc.code,
                detail={"reason": exc.reason},
            )
            raise
        session = sessions.start(ticket, now)
        state.audit(
            "ticket.exchanged",
            session.actor,
            detail={"scopes": list(session.scopes), "expires": session.expires_ms},
        )
        response = json_response(session.to_dict())
        sessions.set_cookie(response, state.sessions, session, state.prefix, request.is_secure)
        return response
