"""Sign-in for the example apps: demo users, server-side sessions, and the guards on it.

The examples are what users copy, so their sign-in is safe to copy:

- **Bounded bodies.** ``MAX_CONTENT_LENGTH`` and ``MAX_FORM_MEMORY_SIZE`` are
  set for the whole app, and the sign-in body is read at most
  ``LOGIN_MAX_BYTES + 1`` bytes, chunked or not (413 beyond). Malformed,
  deeply nested or wrongly typed input is a 4xx, never a 500.
- **Login CSRF.** A browser POST from another site is refused (403) by its
  ``Origin`` or ``Sec-Fetch-Site`` header, so a hostile page cannot sign a
  visitor into an account of its choosing. Clients that send neither header
  (scripts, ably SDK tests, curl) are not browsers carrying someone's cookies
  and pass.
- **Rate limit.** Failed sign-ins are limited per client address with
  Flask-Limiter (``LOGIN_RATE_LIMIT``, default ``10 per minute``); past the
  limit every attempt, right or wrong, gets 429 until the window passes.
- **Sign-out ends the session** on the server (:mod:`examples.sessions`): a
  copied session cookie stops working.
- **Cookie flags.** ``SameSite=Lax`` and ``HttpOnly``; ``Secure`` when
  ``FLASK_SESSION_COOKIE_SECURE=true`` (turn it on behind HTTPS).

Settings (``app.config``, or ``FLASK_<NAME>`` in the environment): see
:data:`DEFAULTS`. Behind a reverse proxy, wrap the app in werkzeug's
``ProxyFix`` so the client address (rate limit) and host (CSRF check) are
the client's, not the proxy's.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from limits import parse_many

from flask_tokenreq.clock import Clock
from flask_tokenreq.clock import now_ms as wall_clock
from flask_tokenreq.errors import (
    BodyTooLarge,
    ConfigError,
    Forbidden,
    InvalidBody,
    Unauthorized,
    UnsupportedMediaType,
)
from flask_tokenreq.http import parse_json, read_body

from .sessions import SessionStore

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Largest sign-in body read (form or JSON); a username and password fit easily.
LOGIN_MAX_BYTES = 4096
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

#: What the examples set before reading ``FLASK_*`` variables and overrides.
DEFAULTS: dict[str, Any] = {
    # Every request body is bounded, chunked or not (werkzeug: 413 beyond).
    "MAX_CONTENT_LENGTH": 128 * 1024,
    "MAX_FORM_MEMORY_SIZE": 16 * 1024,
    "MAX_FORM_PARTS": 100,
    # The session cookie: no cross-site POSTs carry it, no script reads it.
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SECURE": False,  # FLASK_SESSION_COOKIE_SECURE=true behind HTTPS
    # Failed sign-ins per client address (Flask-Limiter notation).
    "LOGIN_RATE_LIMIT": "10 per minute",
    # A sign-in session ends after this many seconds even without sign-out.
    "LOGIN_SESSION_LIFETIME": 12 * 60 * 60,
    # Where sessions live (any SQLAlchemy URL); default: SQLite in the instance folder.
    "LOGIN_SESSIONS_DATABASE": None,
    # Per process by default; redis://... shares the counts between workers and hosts.
    "RATELIMIT_STORAGE_URI": "memory://",
    "RATELIMIT_HEADERS_ENABLED": True,
}


@dataclass(frozen=True)
class Account:
    """A demo user: password, what they may do on every channel, and whether
    they may manage the API keys (the app's own RBAC decides; see
    ``/manage-keys`` in examples/demo.py)."""

    password: str
    operations: tuple[str, ...]
    manages_keys: bool = False


#: Demo users. Demo only: a real app stores password hashes
#: (``werkzeug.security.generate_password_hash``), never passwords.
USERS: dict[str, Account] = {
    "alice": Account("alice-password", ("publish", "subscribe", "history")),
    "bob": Account("bob-password", ("subscribe", "history")),
    "carol": Account("carol-password", ("publish", "subscribe", "history"), manages_keys=True),
}
#: Compared against when the username is unknown, so both paths do the same work.
_NO_PASSWORD = "\0" * 32


class User(UserMixin):
    """A signed-in user. Flask-login keeps the *session id* in the cookie, not the name."""

    def __init__(self, username: str, session_id: str) -> None:
        self.username = username
        self.session_id = session_id

    @property
    def operations(self) -> list[str]:
        return list(USERS[self.username].operations)

    @property
    def manages_keys(self) -> bool:
        return USERS[self.username].manages_keys

    def get_id(self) -> str:
        return self.session_id


def apply_defaults(app: Flask) -> None:
    """The safe defaults above; ``FLASK_*`` variables and overrides applied later win."""
    app.config.update(DEFAULTS)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    fields: Mapping[str, Any]


class SignIn:
    """The sign-in of one example app: users, sessions, CSRF check and rate limit.

    Create it after the app's configuration is complete. Views use
    :meth:`guard` (CSRF check + rate limit), :meth:`credentials`,
    :meth:`sign_in` and :meth:`sign_out`.
    """

    def __init__(self, app: Flask, *, now_ms: Clock = wall_clock) -> None:
        conf = app.config
        lifetime = conf.get("LOGIN_SESSION_LIFETIME")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            raise ConfigError("LOGIN_SESSION_LIFETIME must be a positive number of seconds")
        url = conf.get("LOGIN_SESSIONS_DATABASE")
        if not url:
            os.makedirs(app.instance_path, exist_ok=True)
            url = "sqlite:///" + os.path.join(app.instance_path, "login-sessions.sqlite3")
        self.sessions = SessionStore(url, lifetime_ms=lifetime * 1000, now_ms=now_ms)

        limit = conf.get("LOGIN_RATE_LIMIT")
        try:
            if not isinstance(limit, str):
                raise TypeError(limit)
            parse_many(limit)
        except (TypeError, ValueError):
            raise ConfigError(
                "LOGIN_RATE_LIMIT must be a rate limit like '10 per minute' or '5/minute;50/day'"
            ) from None
        if conf.get("RATELIMIT_STORAGE_URI") == "memory://":
            log.info(
                "Sign-in rate limit is counted per process: set FLASK_RATELIMIT_STORAGE_URI "
                "(e.g. redis://...) to share it between workers"
            )
        self.limiter = Limiter(get_remote_address, app=app)
        self._limit = self.limiter.limit(limit, methods=["POST"], deduct_when=_failed)

        self.login_manager = LoginManager(app)
        self.login_manager.user_loader(self._load_user)
        app.extensions["example_sign_in"] = self

    def _load_user(self, session_id: str) -> User | None:
        username = self.sessions.username(session_id)
        return User(username, session_id) if username in USERS else None

    # -- the guards ---------------------------------------------------------------

    def guard(self, view: F) -> F:
        """For sign-in and sign-out views: refuse cross-site posts, limit failures."""
        return cast(F, self._limit(_same_site_only(view)))

    def fields(self) -> dict[str, Any]:
        """The posted form or JSON object, read at most ``LOGIN_MAX_BYTES``; 4xx otherwise."""
        raw = read_body(request, LOGIN_MAX_BYTES, too_large=BodyTooLarge)
        fields: Any
        if not raw:
            return {}
        if request.mimetype == JSON:
            fields = parse_json(raw)
        elif request.mimetype == FORM:
            try:
                fields = dict(parse_qsl(raw.decode("utf-8"), max_num_fields=20))
            except (UnicodeDecodeError, ValueError):
                raise InvalidBody("the form is not valid UTF-8 form data") from None
        else:
            raise UnsupportedMediaType(
                f"send username and password as a form ({FORM}) or a JSON object ({JSON})"
            )
        if not isinstance(fields, dict):
            raise InvalidBody("send a JSON object with username and password")
        return fields

    def credentials(self) -> Credentials:
        """Username and password from :meth:`fields`; 400 when they are not strings."""
        fields = self.fields()
        username, password = fields.get("username", ""), fields.get("password", "")
        if not isinstance(username, str) or not isinstance(password, str):
            raise InvalidBody("username and password must be strings")
        return Credentials(username, password, fields)

    def sign_in(self, credentials: Credentials) -> User:
        """Check the password and start a session; :class:`Unauthorized` when wrong."""
        account = USERS.get(credentials.username)
        expected = account.password if account else _NO_PASSWORD
        given = credentials.password.encode("utf-8", "surrogatepass")
        if not (hmac.compare_digest(given, expected.encode()) and account is not None):
            raise Unauthorized("Wrong username or password")
        user = User(credentials.username, self.sessions.start(credentials.username))
        login_user(user)
        return user

    def sign_out(self) -> None:
        """End the session on the server, then forget it in the cookie."""
        if current_user.is_authenticated:
            self.sessions.end(current_user.session_id)
        logout_user()


def sign_in_of(app: Flask | None = None) -> SignIn:
    """The :class:`SignIn` of ``app`` (default: the current app)."""
    sign_in: SignIn = (app or current_app).extensions["example_sign_in"]
    return sign_in


def _failed(response: Response) -> bool:
    """Which answers count against the sign-in rate limit: every refusal."""
    return response.status_code >= 400


def cross_site_reason() -> str | None:
    """Why this request looks like a browser POST from another site, or ``None``.

    ``Sec-Fetch-Site`` (sent by current browsers, not forgeable by a page)
    must be ``same-origin`` or ``none``; an ``Origin`` header must name this
    host. A request with neither comes from no browser page and passes.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {fetch_site!r}"
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        return f"Origin {origin!r} is not this site"
    return None


def _same_site_only(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        reason = cross_site_reason()
        if reason is not None:
            raise Forbidden(f"Cross-site sign-in refused ({reason}): sign in from this site's page")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
