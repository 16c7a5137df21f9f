"""Tickets: how the app hands one user a key-management session (DESIGN §7c).

The app decides who may manage keys (its own RBAC) and calls
:meth:`~flask_tokenreq.admin.KeyAdmin.issue_ticket`; the user's browser
trades the ticket for a session at ``<prefix>/session/ticket/exchange``.

A ticket is an itsdangerous signature under the app's ``SECRET_KEY`` (and
``SECRET_KEY_FALLBACKS``, as Flask's own session) with a salt of its own, so
no other signed value of the app can pass for one. Its payload: the actor,
the scopes, a random nonce and the expiry in ms on the provider's clock. It
is good once: the exchange claims its nonce in the provider's nonce store
until the expiry, so a second exchange fails on every worker and host that
shares the store. Refusals say which of missing, invalid, expired or already
used; the ticket itself never goes into a message, log line or audit row.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from ..errors import ConfigError, Unauthorized
from ..provider import claim_nonce
from ..stores import NonceStore

__all__ = [
    "DEFAULT_TTL_MS",
    "MAX_TTL_MS",
    "SCOPES",
    "Ticket",
    "TicketRefused",
    "check_scopes",
    "issue",
    "load_signed",
    "redeem",
    "serializer",
]

#: What a ticket (and the session it becomes) may allow.
SCOPES = ("keys:read", "keys:write")
#: A ticket is meant to be used at once: 60 s by default, at most 10 minutes.
DEFAULT_TTL_MS = 60_000
MAX_TTL_MS = 600_000
#: Longest actor: the key store's 255-character audit column, less ``admin:``.
MAX_ACTOR_LENGTH = 200
#: Longer "tickets" are refused unread (a real one is about 150 characters).
MAX_TICKET_LENGTH = 2048
#: The name ticket nonces are claimed under in the nonce store (no API key has a ``:``).
NONCE_KEY = "tokenreq-admin:ticket"
SALT = "flask-tokenreq.admin.ticket"

_MESSAGES = {
    "missing": "ticket missing: open the key page through the app's link, which carries one",
    "invalid": "ticket invalid: it was not issued by this app (or was changed); ask the "
    "app for a new link",
    "expired": "ticket expired: a ticket is good for a short time only; ask the app for a new link",
    "used": "ticket already used: a ticket opens one session only; ask the app for a new link",
}


class TicketRefused(Unauthorized):
    """A ticket that cannot be exchanged (401, 40100); ``reason`` says why, for the audit log."""

    def __init__(self, reason: str, actor: str | None = None) -> None:
        super().__init__(_MESSAGES[reason])
        self.reason = reason
        self.actor = actor


@dataclass(frozen=True, slots=True)
class Ticket:
    """A verified ticket's payload."""

    actor: str
    scopes: tuple[str, ...]
    nonce: str = field(repr=False)
    expires_ms: int


def serializer(config: Mapping[str, Any], salt: str) -> URLSafeSerializer:
    """An itsdangerous serializer under ``SECRET_KEY`` (and its fallbacks), with ``salt``.

    New signatures use ``SECRET_KEY``; values signed with a key of
    ``SECRET_KEY_FALLBACKS`` still verify (Flask's convention for rotating
    it). Raises :class:`ConfigError` when ``SECRET_KEY`` is missing or the
    fallbacks are not a list.
    """
    secret_key = config.get("SECRET_KEY")
    if not secret_key or not isinstance(secret_key, (str, bytes)):
        raise ConfigError(
            "KeyAdmin signs its tickets and session cookies with SECRET_KEY: set it "
            "(a long random value, the same on every worker)"
        )
    fallbacks = config.get("SECRET_KEY_FALLBACKS") or []
    if not isinstance(fallbacks, (list, tuple)) or not all(
        isinstance(k, (str, bytes)) and k for k in fallbacks
    ):
        raise ConfigError("SECRET_KEY_FALLBACKS must be a list of keys (older keys)")
    # itsdangerous signs with the last key and verifies with any, newest first.
    return URLSafeSerializer([*fallbacks, secret_key], salt=salt)


def check_actor(actor: object) -> str:
    """The actor of a ticket: 1 to 200 printable characters (it goes into the audit log)."""
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("a ticket needs an actor: who will use the key page (e.g. a user id)")
    if len(actor) > MAX_ACTOR_LENGTH or not actor.isprintable():
        raise ValueError(f"a ticket's actor has at most {MAX_ACTOR_LENGTH} printable characters")
    return actor


def check_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """Scopes as a tuple in :data:`SCOPES` order; unknown, none, or a bare string: ValueError."""
    if isinstance(scopes, str):
        raise ValueError(f"scopes is a list such as {list(SCOPES)!r}, not one string")
    given = list(scopes)
    unknown = [s for s in given if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}: the scopes are {', '.join(SCOPES)}")
    if not given:
        raise ValueError(f"a ticket needs at least one scope: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in given)


def check_ttl(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL_MS:
        raise ValueError(f"a ticket's ttl is 1 to {MAX_TTL_MS} ms (default {DEFAULT_TTL_MS})")
    return ttl


def issue(
    signer: URLSafeSerializer, actor: str, scopes: Sequence[str], ttl: int, now_ms: int
) -> tuple[str, Ticket]:
    """A new signed ticket and its payload; checks every argument (ValueError)."""
    ticket = Ticket(
        actor=check_actor(actor),
        scopes=check_scopes(scopes),
        nonce=secrets.token_urlsafe(18),
        expires_ms=now_ms + check_ttl(ttl),
    )
    payload = {
        "a": ticket.actor,
        "s": list(ticket.scopes),
        "n": ticket.nonce,
        "x": ticket.expires_ms,
    }
    return str(signer.dumps(payload)), ticket


def redeem(signer: URLSafeSerializer, text: str | None, now_ms: int, nonces: NonceStore) -> Ticket:
    """The ticket's payload, once: raises :class:`TicketRefused` (missing, invalid,
    expired, used) or, when the nonce store fails, ``StoreUnavailable`` (503).

    Checked in this order: present, signature, expiry, single use (only a
    genuine, live ticket is claimed, until its expiry).
    """
    if not text:
        raise TicketRefused("missing")
    ticket = _load(signer, text)
    if ticket is None:
        raise TicketRefused("invalid")
    if now_ms > ticket.expires_ms:
        raise TicketRefused("expired", ticket.actor)
    if not claim_nonce(nonces, NONCE_KEY, ticket.nonce, ticket.expires_ms, "key page ticket"):
        raise TicketRefused("used", ticket.actor)
    return ticket


def _load(signer: URLSafeSerializer, text: str) -> Ticket | None:
    payload = load_signed(signer, text, "n")
    if payload is None or not isinstance(payload["n"], str) or not payload["n"]:
        return None
    return Ticket(payload["a"], payload["s"], payload["n"], payload["x"])


def load_signed(signer: URLSafeSerializer, text: str, extra: str) -> dict[str, Any] | None:
    """A signed payload of a ticket or session, checked, or ``None`` when anything is off.

    It has exactly the fields ``a`` (actor), ``s`` (scopes), ``x`` (expiry,
    ms) and ``extra``; ``a`` and ``s`` pass :func:`check_actor` and
    :func:`check_scopes` (``s`` comes back as a tuple).
    """
    if len(text) > MAX_TICKET_LENGTH:
        return None
    try:
        payload = signer.loads(text)
    except (BadSignature, UnicodeError, ValueError):
        return None
    if not isinstance(payload, dict) or set(payload) != {"a", "s", "x", extra}:
        return None
    expires, scopes = payload["x"], payload["s"]
    if isinstance(expires, bool) or not isinstance(expires, int) or not isinstance(scopes, list):
        return None
    try:
        payload["a"] = check_actor(payload["a"])
        payload["s"] = check_scopes(scopes)
    except ValueError:
        return None
    return payload
