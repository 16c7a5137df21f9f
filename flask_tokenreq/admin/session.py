"""The key-management session: a signed cookie, 15 minutes, with its CSRF value.

A ticket becomes a session once (see :mod:`.tickets`). The session is a
cookie named ``tokenreq_admin``: itsdangerous-signed under the app's
``SECRET_KEY`` with a salt of its own, holding the actor, the scopes, a
random CSRF value and the expiry in ms on the provider's clock (checked on
every request; the cookie's ``Max-Age`` only tells the browser). It is
``HttpOnly``, ``SameSite=Strict``, ``Path=<prefix>`` and ``Secure`` on
https. It cannot be extended: after 15 minutes the app issues a new ticket.

Every change also needs the ``X-TokenReq-CSRF`` header equal to the
session's CSRF value, which the page gets in the exchange's JSON answer
(a cross-site form cannot read it, nor set the header).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from flask import Request, Response
from itsdangerous import URLSafeSerializer

from ..errors import Forbidden, Unauthorized
from .tickets import Ticket, load_signed

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "SALT",
    "SESSION_MS",
    "Session",
    "check_csrf",
    "from_request",
    "set_cookie",
    "start",
]

COOKIE = "tokenreq_admin"
CSRF_HEADER = "X-TokenReq-CSRF"
SALT = "flask-tokenreq.admin.session"
#: How long a session lasts (not renewed by use).
SESSION_MS = 15 * 60_000

_NO_SESSION = "no key-management session: open the key page through the app's link (a new ticket)"


@dataclass(frozen=True, slots=True)
class Session:
    """Who may manage keys in this browser, what, until when; and the CSRF value."""

    actor: str
    scopes: tuple[str, ...]
    csrf: str = field(repr=False)
    expires_ms: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON of the exchange and of ``GET <prefix>/api/session``."""
        return {
            "actor": self.actor,
            "scopes": list(self.scopes),
            "csrf": self.csrf,
            "expires": self.expires_ms,
        }

    def require(self, scope: str) -> None:
        """Raise :class:`Forbidden` (403, 40300) unless the session has ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(
                f"this key-management session lacks the {scope!r} scope: ask the app for a "
                "ticket with it"
            )


def start(ticket: Ticket, now_ms: int) -> Session:
    """A new session for a redeemed ticket: its actor and scopes, a fresh CSRF value."""
    return Session(ticket.actor, ticket.scopes, secrets.token_urlsafe(32), now_ms + SESSION_MS)


def set_cookie(
    response: Response, signer: URLSafeSerializer, session: Session, path: str, secure: bool
) -> None:
    """Put ``session`` in its cookie: HttpOnly, SameSite=Strict, scoped to ``path``."""
    payload = {
        "a": session.actor,
        "s": list(session.scopes),
        "c": session.csrf,
        "x": session.expires_ms,
    }
    response.set_cookie(
        COOKIE,
        str(signer.dumps(payload)),
        max_age=SESSION_MS // 1000,
        path=path or "/",
        secure=secure,
        httponly=True,
        samesite="Strict",
    )


def from_request(req: Request, signer: URLSafeSerializer, now_ms: int) -> Session:
    """The request's live session; :class:`Unauthorized` (401, 40100) saying why not."""
    text = req.cookies.get(COOKIE)
    if not text:
        raise Unauthorized(_NO_SESSION)
    session = _load(signer, text)
    if session is None:
        raise Unauthorized(
            "key-management session invalid: open the key page through the app's link again"
        )
    if now_ms > session.expires_ms:
        raise Unauthorized(
            "key-management session expired (sessions last 15 minutes): open the key page "
            "through the app's link again"
        )
    return session


def check_csrf(req: Request, session: Session) -> None:
    """Raise :class:`Forbidden` (403, 40300) unless ``X-TokenReq-CSRF`` is the session's."""
    given = req.headers.get(CSRF_HEADER, "")
    # Bytes: compare_digest refuses non-ASCII str (a 500 for a client's header).
    if not given or not hmac.compare_digest(
        given.encode("utf-8", "replace"), session.csrf.encode("ascii")
    ):
        raise Forbidden(
            f"CSRF header missing or wrong: send {CSRF_HEADER} with the csrf value of the session"
        )


def _load(signer: URLSafeSerializer, text: str) -> Session | None:
    payload = load_signed(signer, text, "c")
    csrf = None if payload is None else payload["c"]
    if payload is None or not isinstance(csrf, str) or not csrf or not csrf.isascii():
        return None
    return Session(payload["a"], payload["s"], csrf, payload["x"])
