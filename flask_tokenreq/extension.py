"""The Flask extension pattern, shared by the issuer, the provider and the key admin.

An extension object is registered in ``app.extensions[name]`` and keeps its
per-app state in ``app.extensions[name + ".state"]``, so one object can serve
several apps and the object itself holds only what the developer configured.
"""

from __future__ import annotations

from typing import Any, TypeVar

from flask import Flask, current_app

from .errors import InternalError

S = TypeVar("S")

#: ``app.extensions`` names of the issuer and the provider; one app may have both
#: (then :func:`~flask_tokenreq.settings.check_both_roles` applies).
ISSUER = "tokenreq_issuer"
PROVIDER = "tokenreq_provider"


def check_unregistered(app: Flask, name: str, extension: object) -> None:
    """Refuse a second ``name`` on ``app``: call it before ``init_app`` opens anything."""
    if name in app.extensions:
        kind = type(extension).__name__
        raise RuntimeError(
            f"A {kind} is already registered on this app ({name!r}); use that instance"
        )


def register(app: Flask, name: str, extension: object, state: object) -> None:
    """Register ``extension`` and its ``state`` on ``app``; a second one is an error."""
    check_unregistered(app, name, extension)
    app.extensions[name + ".state"] = state
    app.extensions[name] = extension


def state_of(extension: object, name: str, kind: type[S], app: Flask | None = None) -> S:
    """``extension``'s state for ``app`` (default: the current app).

    Raises :class:`InternalError` (500, 50000) when ``init_app`` was not
    called for that app, e.g. a blueprint registered by hand without it.
    """
    target: Any = app if app is not None else current_app
    state = target.extensions.get(name + ".state")
    if not isinstance(state, kind) or target.extensions.get(name) is not extension:
        raise InternalError(
            f"{type(extension).__name__}.init_app(app) has not been called for this app"
        )
    return state
