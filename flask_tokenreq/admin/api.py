"""The key page's JSON API under ``<prefix>/api/`` (DESIGN §7c, ADMIN.md).

Routes take every method and refuse the wrong ones themselves, so that a
405 is an Ably JSON error too (routing errors would reach the app's own
handlers). Every route needs the session cookie (401 otherwise); reads need the
``keys:read`` scope, changes ``keys:write`` and the ``X-TokenReq-CSRF``
header (403 otherwise). Bodies are JSON objects of known fields, read at
most ``TOKENREQ_MAX_BODY_BYTES``. What a value may be is checked where it
is used: by the key store (name, capability, expires, grace, reason) and
the key chain (a static key: 409), the same checks as for the CLI. Changes
are made by the key store as ``admin:<actor>``, which writes their audit
rows in the change's own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from ..errors import (
    BodyTooLarge,
    InvalidBody,
    InvalidParameter,
    NotFound,
    UnsupportedMediaType,
)
from ..http import ALL_METHODS, JSON, allow, json_response, parse_json, read_body
from . import session as sessions

if TYPE_CHECKING:  # pragma: no cover
    from .extension import AdminState

__all__ = ["AUDIT_LIMIT_DEFAULT", "AUDIT_LIMIT_MAX", "register"]

AUDIT_LIMIT_DEFAULT = 50
AUDIT_LIMIT_MAX = 500
#: How long the audit view waits for queued events (refusals) to be written, in s.
_AUDIT_FLUSH_S = 2.0


def register(bp: Blueprint, state_of: Callable[[], AdminState]) -> None:
    """Add the JSON API to the key page's blueprint."""

    def authorized(scope: str | None, change: bool = False) -> tuple[AdminState, sessions.Session]:
        state = state_of()
        session = sessions.from_request(request, state.sessions, state.now())
        if scope is not None:
            session.require(scope)
        if change:
            sessions.check_csrf(request, session)
        return state, session

    @bp.route("/api/session", methods=ALL_METHODS)
    def current_session() -> ResponseReturnValue:
        allow(request, "GET", "HEAD")
        _, session = authorized(None)
        return json_response(session.to_dict())

    @bp.route("/api/keys", methods=ALL_METHODS)
    def keys() -> ResponseReturnValue:
        if request.method == "POST":
            return create_key()
        allow(request, "GET", "HEAD", "POST")
        state, _ = authorized("keys:read")
        status = request.args.get("status", "all")
        return json_response({"keys": state.provider.keys.key_dicts(status, state.now())})

    def create_key() -> ResponseReturnValue:
        state, session = authorized("keys:write", change=True)
        body = _json_object(state, "name", "capability", "expires")
        key, full = state.provider.keys.for_change().create(
            body.get("name"),  # type: ignore[arg-type]  # checked by the store
            body.get("capability"),
            body.get("expires"),
            actor=_actor(session),
        )
        return json_response({**_key(state, key.key_name), "key": full}, 201)

    @bp.route("/api/keys/<key_name>/rotate", methods=ALL_METHODS)
    def rotate_key(key_name: str) -> ResponseReturnValue:
        allow(request, "POST")
        state, session = authorized("keys:write", change=True)
        body = _json_object(state, "grace")
        grace = body.get("grace")
        store = state.provider.keys.for_change(key_name)
        full = store.rotate(key_name, 0 if grace is None else grace, actor=_actor(session))
        return json_response({**_key(state, key_name), "key": full})

    @bp.route("/api/keys/<key_name>/revoke", methods=ALL_METHODS)
    def revoke_key(key_name: str) -> ResponseReturnValue:
        allow(request, "POST")
        state, session = authorized("keys:write", change=True)
        body = _json_object(state, "reason")
        store = state.provider.keys.for_change(key_name)
        store.revoke(key_name, body.get("reason"), actor=_actor(session))  # type: ignore[arg-type]
        return json_response(_key(state, key_name))

    @bp.route("/api/audit", methods=ALL_METHODS)
    def audit() -> ResponseReturnValue:
        allow(request, "GET", "HEAD")
        state, _ = authorized("keys:read")
        limit = _limit(request.args.get("limit"))
        log = state.provider.audit
        if log is None:  # no database in use: nothing is audited
            return json_response({"events": []})
        log.flush(_AUDIT_FLUSH_S)
        return json_response({"events": [e.to_dict() for e in log.query(limit=limit)]})

    @bp.route("/api/<path:rest>", methods=ALL_METHODS)
    def unknown(rest: str) -> ResponseReturnValue:
        raise NotFound(
            "Not found: the key page's API has session, keys, keys/<keyName>/rotate, "
            "keys/<keyName>/revoke and audit"
        )


def _actor(session: sessions.Session) -> str:
    return f"admin:{session.actor}"


def _key(state: AdminState, key_name: str) -> dict[str, Any]:
    """A key as the list shows it, after a change (the change's own read of it)."""
    document = state.provider.keys.key_dict(key_name, state.now())
    if document is None:  # pragma: no cover - it was just changed
        raise NotFound(f"No key {key_name!r}")
    return document


def _json_object(state: AdminState, *fields: str) -> dict[str, Any]:
    """The body: a JSON object (``application/json``) with no field but ``fields``."""
    if request.mimetype != JSON:
        raise UnsupportedMediaType(f"send the body as {JSON}")
    raw = read_body(request, state.provider.settings.max_body_bytes, BodyTooLarge)
    if not raw:
        raise InvalidBody("request body is empty: send a JSON object, e.g. {}")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidBody("request body must be a JSON object")
    unknown = [name for name in body if name not in fields]
    if unknown:
        raise InvalidParameter(
            f"unknown field {unknown[0][:100]!r}: this endpoint takes {', '.join(fields)}"
        )
    return body


def _limit(text: str | None) -> int:
    if text is None:
        return AUDIT_LIMIT_DEFAULT
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= AUDIT_LIMIT_MAX):
        raise InvalidParameter(f"limit must be a whole number from 1 to {AUDIT_LIMIT_MAX}")
    return int(text)
