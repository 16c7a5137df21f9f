"""The key page's server side (``KeyAdmin``): tickets, the session, the JSON API.

Real SQLite files and PostgreSQL for the keys and the audit log, real Redis
and SQL nonce stores for single-use tickets across app instances (as
gunicorn workers or hosts), the provider's own exchange to prove what a
change did (rotate: the old secret gets 40101; revoke: 40131 at once), and
an injected clock for every expiry. No answer but create's and rotate's
shows a secret; none shows a ticket.
"""

from __future__ import annotations

import configparser
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, url_for
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_tokenreq import KeyAdmin, models, sign_token_request
from flask_tokenreq.admin import tickets
from flask_tokenreq.audit import AuditEvent
from flask_tokenreq.errors import ConfigError, StoreUnavailable
from flask_tokenreq.keys import changes
from flask_tokenreq.keys.secret import hint
from flask_tokenreq.provider import TokenProvider
from flask_tokenreq.stores import MemoryNonceStore, NonceStore, open_nonce_store
from tests.conftest import KEY, KEY_NAME, ROOT, FakeClock
from tests.dbs import FERNET_1, TcpProxy, db_url, pg_schema

__all__ = ["db_url", "pg_schema"]  # fixtures used by name

SIGNING_SECRET = "admin-test-signing-secret-0123456789abcdef0123"
SECRET_KEY = "admin-test-session-key-0123456789abcdef0123456789"
START = 1_700_000_000_000
PREFIX = "/tokenreq/admin"
#: A managed key's secret (or a long piece of one).
SECRET_LIKE = re.compile(r"tkr_[A-Za-z0-9_-]{8}")


# -- the apps ----------------------------------------------------------------------------


class Admin:
    """One app with a provider and a KeyAdmin (one worker); a browser-like test client."""

    def __init__(self, app: Flask, provider: TokenProvider, admin: KeyAdmin) -> None:
        self.app = app
        self.provider = provider
        self.admin = admin
        self.client: FlaskClient = app.test_client()
        self.csrf: str | None = None

    def ticket(self, actor: str = "alice", **kwargs: Any) -> str:
        with self.app.app_context():
            return self.admin.issue_ticket(actor, **kwargs)

    def exchange(self, ticket: str | None, client: FlaskClient | None = None) -> TestResponse:
        query = "" if ticket is None else f"?ticket={ticket}"
        return (client or self.client).get(f"{PREFIX}/session/ticket/exchange{query}")

    def login(self, actor: str = "alice", **kwargs: Any) -> dict[str, Any]:
        response = self.exchange(self.ticket(actor, **kwargs))
        assert response.status_code == 200, response.get_data(as_text=True)
        body: dict[str, Any] = response.get_json()
        self.csrf = body["csrf"]
        return body

    def get(self, path: str) -> TestResponse:
        return self.client.get(f"{PREFIX}/api{path}")

    def post(self, path: str, body: Any = None, *, csrf: str | None = "session", **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if csrf == "session":
            csrf = self.csrf
        if csrf is not None:
            headers["X-TokenReq-CSRF"] = csrf
        if "data" not in kw:
            kw["data"] = json.dumps({} if body is None else body)
            kw.setdefault("content_type", "application/json")
        return self.client.post(f"{PREFIX}/api{path}", headers=headers, **kw)

    def list_keys(self, status: str = "all") -> list[dict[str, Any]]:
        response = self.get(f"/keys?status={status}")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert not SECRET_LIKE.search(response.get_data(as_text=True))
        keys: list[dict[str, Any]] = response.get_json()["keys"]
        return keys

    def create(self, name: str = "CI Key", **body: Any) -> dict[str, Any]:
        response = self.post("/keys", {"name": name, **body})
        assert response.status_code == 201, response.get_data(as_text=True)
        created: dict[str, Any] = response.get_json()
        return created

    def provider_exchange(self, key: str) -> int:
        """A real TokenRequest exchange at the provider: 200 or the Ably error code."""
        treq = sign_token_request(key, timestamp=self.now())
        response = self.client.post(
            f"/keys/{treq.key_name}/requestToken",
            data=treq.to_json(),
            content_type="application/json",
        )
        if response.status_code == 200:
            return 200
        code: int = response.get_json()["error"]["code"]
        return code

    def now(self) -> int:
        with self.app.app_context():
            return self.provider._state().now()

    def audit(self) -> list[dict[str, Any]]:
        """Every audit row, oldest first (queued ones written first)."""
        with self.app.app_context():
            log = self.provider.audit
            assert log is not None
            assert log.flush()
            rows = log.query(limit=10_000)
        return [e.to_dict() for e in reversed(rows)]


MakeAdmin = Callable[..., Admin]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def make_admin(db_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[MakeAdmin]:
    made: list[Admin] = []

    def make(nonces: NonceStore | None = None, prefix: str = PREFIX, **config: Any) -> Admin:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config.update(
            TESTING=True,
            SECRET_KEY=SECRET_KEY,
            TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
            TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
            TOKENREQ_DATABASE_URL=db_url,
            TOKENREQ_PROVIDER_KEYS=[KEY],
        )
        app.config.update(config)
        store = nonces or MemoryNonceStore(now_ms=clock, warn=False)
        provider = TokenProvider(app, nonces=store, now_ms=clock)
        admin = KeyAdmin(app, url_prefix=prefix)
        made.append(Admin(app, provider, admin))
        return made[-1]

    yield make
    for a in made:
        a.provider.close()


@pytest.fixture
def admin(make_admin: MakeAdmin) -> Admin:
    return make_admin()


def error_of(response: TestResponse, status: int, code: int) -> str:
    """The Ably error's message, after checking status, code and that it is JSON."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"]["code"] == code
    assert body["error"]["statusCode"] == status
    message: str = body["error"]["message"]
    return message


def key_events(admin: Admin) -> list[dict[str, Any]]:
    return [e for e in admin.audit() if e["event"].startswith("key.")]


# -- tickets -----------------------------------------------------------------------------


def test_a_ticket_opens_a_session_once(admin: Admin, clock: FakeClock) -> None:
    ticket = admin.ticket("alice")
    response = admin.exchange(ticket)
    assert response.status_code == 200
    body = response.get_json()
    assert body == {
        "actor": "alice",
        "scopes": ["keys:read", "keys:write"],
        "csrf": body["csrf"],
        "expires": START + 15 * 60_000,
    }
    assert len(body["csrf"]) >= 32
    assert response.headers["Cache-Control"] == "no-store"
    # The session works, and GET api/session gives the same answer (no new cookie).
    again = admin.get("/session")
    assert again.get_json() == body
    assert "Set-Cookie" not in again.headers
    events = [(e["event"], e["actor"]) for e in admin.audit()]
    assert events == [("ticket.issued", "admin:alice"), ("ticket.exchanged", "admin:alice")]
    issued = admin.audit()[0]
    assert issued["detail"] == {"scopes": ["keys:read", "keys:write"], "expires": START + 60_000}


def test_the_session_cookie_is_httponly_strict_scoped_and_15_minutes(
    admin: Admin, make_admin: MakeAdmin
) -> None:
    response = admin.exchange(admin.ticket())
    cookie = response.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert cookie.startswith("tokenreq_admin=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert f"Path={PREFIX}" in cookie.split("; ")
    assert "Max-Age=900" in cookie
    assert "secure" not in attributes  # plain http: the browser would drop a Secure cookie
    secure = admin.client.get(
        f"{PREFIX}/session/ticket/exchange?ticket={admin.ticket()}", base_url="https://localhost"
    )
    assert "Secure" in secure.headers["Set-Cookie"]
    # Another prefix scopes the cookie to it.
    other = make_admin(prefix="/settings/keys/")
    cookie = other.client.get(
        f"/settings/keys/session/ticket/exchange?ticket={other.ticket()}"
    ).headers["Set-Cookie"]
    assert "Path=/settings/keys" in cookie.split("; ")


@pytest.mark.parametrize("how", ["missing", "empty", "expired", "reused", "forged", "foreign"])
def test_a_ticket_that_cannot_be_used_is_401_saying_why(
    admin: Admin, make_admin: MakeAdmin, clock: FakeClock, how: str
) -> None:
    ticket: str | None = admin.ticket("mallory")
    expected, reason = {
        "missing": ("ticket missing", "missing"),
        "empty": ("ticket missing", "missing"),
        "expired": ("ticket expired", "expired"),
        "reused": ("ticket already used", "used"),
        "forged": ("ticket invalid", "invalid"),
        "foreign": ("ticket invalid", "invalid"),
    }[how]
    if how == "missing":
        ticket = None
    elif how == "empty":
        ticket = ""
    elif how == "expired":
        clock.advance(60_001)
    elif how == "reused":
        assert admin.exchange(ticket, admin.app.test_client()).status_code == 200
    elif how == "forged":
        assert ticket is not None
        ticket = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
    else:  # signed under another app's SECRET_KEY
        ticket = make_admin(SECRET_KEY="another-apps-secret-key-0123456789abcdef").ticket()
    response = admin.exchange(ticket)
    message = error_of(response, 401, 40100)
    assert message.startswith(expected)
    assert "Set-Cookie" not in response.headers
    error_of(admin.get("/session"), 401, 40100)  # no session came of it
    refused = [e for e in admin.audit() if e["event"] == "ticket.refused"]
    assert len(refused) == 1
    assert refused[0]["code"] == 40100
    assert refused[0]["detail"] == {"reason": reason}
    assert refused[0]["actor"] == ("admin:mallory" if how in ("expired", "reused") else None)
    if ticket:
        assert ticket not in json.dumps(admin.audit())


def test_a_ticket_is_good_until_its_expiry_inclusive(admin: Admin, clock: FakeClock) -> None:
    ticket = admin.ticket(ttl=5_000)
    clock.advance(5_000)
    assert admin.exchange(ticket).status_code == 200


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_a_ticket_is_single_use_across_app_instances(
    make_admin: MakeAdmin,
    clock: FakeClock,
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """Two workers with their own connections to one Redis or SQL nonce store."""
    if backend == "redis":
        url: str = request.getfixturevalue("redis_url")
    elif backend == "postgres":
        url = request.getfixturevalue("pg_schema")
    else:
        url = f"sqlite:///{tmp_path / 'nonces.sqlite3'}"
    stores = [open_nonce_store(url, now_ms=clock) for _ in range(2)]
    try:
        one, two = (make_admin(nonces=s) for s in stores)
        ticket = one.ticket()
        assert two.exchange(ticket).status_code == 200
        assert error_of(one.exchange(ticket), 401, 40100).startswith("ticket already used")
        assert error_of(two.exchange(ticket), 401, 40100).startswith("ticket already used")
    finally:
        for s in stores:
            s.close()


def test_a_ticket_signed_with_a_fallback_secret_key_still_works(make_admin: MakeAdmin) -> None:
    old = make_admin(SECRET_KEY="the-old-secret-key-0123456789abcdef0123456789")
    ticket = old.ticket()
    new = make_admin(SECRET_KEY_FALLBACKS=["the-old-secret-key-0123456789abcdef0123456789"])
    assert new.exchange(ticket).status_code == 200


def test_issue_ticket_checks_its_arguments(admin: Admin) -> None:
    for kwargs, message in [
        ({"actor": ""}, "needs an actor"),
        ({"actor": "x" * 201}, "at most 200"),
        ({"actor": "a\nb"}, "printable"),
        ({"scopes": ("keys:admin",)}, "unknown scope 'keys:admin'"),
        ({"scopes": ()}, "at least one scope"),
        ({"scopes": "keys:read"}, "not one string"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": 600_001}, "ttl"),
        ({"ttl": True}, "ttl"),
    ]:
        args = {"actor": "alice", **kwargs}
        with pytest.raises(ValueError, match=re.escape(message)):
            admin.ticket(**args)
    assert [e["event"] for e in admin.audit()] == []  # nothing issued, nothing audited
    read_only = admin.ticket("bob", scopes=["keys:write", "keys:read", "keys:read"])
    assert admin.exchange(read_only).get_json()["scopes"] == ["keys:read", "keys:write"]


def test_key_admin_needs_a_provider_and_a_secret_key(tmp_path: Path, clock: FakeClock) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY)
    with pytest.raises(ConfigError, match="TokenProvider"):
        KeyAdmin(app)
    for config, message in [
        ({}, "SECRET_KEY"),
        ({"SECRET_KEY": SECRET_KEY, "SECRET_KEY_FALLBACKS": "old-key"}, "SECRET_KEY_FALLBACKS"),
    ]:
        app = Flask(__name__)
        app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY])
        app.config.update(config)
        TokenProvider(app, nonces=MemoryNonceStore(warn=False), now_ms=clock)
        with pytest.raises(ConfigError, match=message):
            KeyAdmin(app)
    with pytest.raises(ConfigError, match="url_prefix"):
        KeyAdmin(url_prefix="admin")
    admin = KeyAdmin()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET_KEY, TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY]
    )
    TokenProvider(app, nonces=MemoryNonceStore(warn=False), now_ms=clock)
    admin.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        admin.init_app(app)
    assert app.extensions["tokenreq_admin"] is admin


# -- the page ----------------------------------------------------------------------------


def test_the_page_is_always_served_with_strict_headers(admin: Admin) -> None:
    for path in (f"{PREFIX}/", f"{PREFIX}/?ticket={admin.ticket()}"):
        response = admin.client.get(path)
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        headers = response.headers
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Security-Policy"] == (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        )
        html = response.get_data(as_text=True)
        assert f'data-prefix="{PREFIX}"' in html
        assert "<script>" not in html
        assert "<style" not in html
        assert " style=" not in html
    with admin.app.test_request_context():
        assert url_for("tokenreq_admin.page", ticket="t") == f"{PREFIX}/?ticket=t"
    assert [e["event"] for e in admin.audit()] == ["ticket.issued"]  # serving the page uses none


def test_unknown_api_paths_and_methods_are_json_errors(admin: Admin) -> None:
    admin.login()
    error_of(admin.get("/nothing"), 404, 40400)
    error_of(admin.client.delete(f"{PREFIX}/api/keys"), 405, 40500)
    error_of(admin.client.post(f"{PREFIX}/session/ticket/exchange"), 405, 40500)


# -- the session on the API --------------------------------------------------------------


def test_the_api_needs_a_live_genuine_session(admin: Admin, clock: FakeClock) -> None:
    for path in ("/session", "/keys", "/audit"):
        assert error_of(admin.get(path), 401, 40100).startswith("no key-management session")
    error_of(admin.post("/keys", {"name": "k"}, csrf="x"), 401, 40100)
    admin.login()
    assert admin.get("/keys").status_code == 200
    # A changed cookie: invalid.
    cookie = admin.client.get_cookie("tokenreq_admin", path=PREFIX)
    assert cookie is not None
    value = cookie.value
    admin.client.set_cookie("tokenreq_admin", value[:-3] + "abc", path=PREFIX)
    assert error_of(admin.get("/keys"), 401, 40100).startswith("key-management session invalid")
    admin.client.set_cookie("tokenreq_admin", value, path=PREFIX)
    # 15 minutes on the provider's clock, then expired (the cookie itself may linger).
    clock.advance(15 * 60_000)
    assert admin.get("/keys").status_code == 200
    clock.advance(1)
    assert error_of(admin.get("/keys"), 401, 40100).startswith("key-management session expired")


def test_a_read_only_session_lists_but_cannot_change(admin: Admin) -> None:
    managed = admin.login("reader", scopes=["keys:write"])  # write without read: cannot list
    assert managed["scopes"] == ["keys:write"]
    error_of(admin.get("/keys"), 403, 40300)
    created = admin.create("made by a writer")
    admin.login("reader", scopes=["keys:read"])
    before = admin.list_keys()
    assert [k["keyName"] for k in before] == [KEY_NAME, created["keyName"]]
    name = created["keyName"]
    for path, body in [
        ("/keys", {"name": "k"}),
        (f"/keys/{name}/rotate", {}),
        (f"/keys/{name}/revoke", {"reason": "r"}),
    ]:
        message = error_of(admin.post(path, body), 403, 40300)
        assert "keys:write" in message
    assert admin.list_keys() == before
    assert admin.get("/audit").status_code == 200


@pytest.mark.parametrize("csrf", [None, "", "wrong", "é-non-ascii", "session-of-another"])
def test_changes_need_the_sessions_csrf_header(
    admin: Admin, make_admin: MakeAdmin, csrf: str | None
) -> None:
    created_by = admin.login()
    key = admin.create()
    before, events = admin.list_keys(), key_events(admin)
    if csrf == "session-of-another":
        other = make_admin()
        other.login()
        csrf = other.csrf
        assert csrf != created_by["csrf"]
    for path, body in [
        ("/keys", {"name": "k"}),
        (f"/keys/{key['keyName']}/rotate", {}),
        (f"/keys/{key['keyName']}/revoke", {"reason": "r"}),
    ]:
        message = error_of(admin.post(path, body, csrf=csrf), 403, 40300)
        assert message.startswith("CSRF header missing or wrong")
    assert admin.list_keys() == before
    assert key_events(admin) == events


# -- create, rotate, revoke --------------------------------------------------------------


def test_create_shows_the_full_key_once_and_it_works_at_the_provider(admin: Admin) -> None:
    admin.login()
    created = admin.create("CI Key", capability={"chat:*": ["publish"]}, expires=START + 86_400_000)
    full = created.pop("key")
    key_name = created["keyName"]
    assert full.startswith(f"{key_name}:tkr_")
    assert created == {
        "keyName": key_name,
        "name": "CI Key",
        "display": created["display"],
        "capability": {"chat:*": ["publish"]},
        "status": "active",
        "created": START,
        "expires": START + 86_400_000,
        "revoked": None,
        "revokedReason": None,
        "lastUsed": None,
        "source": "database",
    }
    secret = full.partition(":")[2]
    assert created["display"] == f"{key_name}:{hint(secret)}"
    listed = admin.list_keys()
    assert listed[-1] == created  # the list shows the same, never the secret
    assert secret[4:12] not in json.dumps(listed)
    assert admin.provider_exchange(full) == 200
    assert [k["status"] for k in admin.list_keys("active")] == ["active", "active"]
    [event] = key_events(admin)
    assert (event["event"], event["actor"], event["key_name"]) == (
        "key.created",
        "admin:alice",
        key_name,
    )


def test_rotate_refuses_the_old_secret_at_the_provider_and_accepts_the_new(
    admin: Admin, make_admin: MakeAdmin, clock: FakeClock
) -> None:
    worker2 = make_admin()  # another worker on the same database
    admin.login()
    old = admin.create()["key"]
    name = old.partition(":")[0]
    assert worker2.provider_exchange(old) == 200
    response = admin.post(f"/keys/{name}/rotate", {})
    assert response.status_code == 200
    rotated = response.get_json()
    new = rotated.pop("key")
    assert new.startswith(f"{name}:tkr_")
    assert new != old
    assert (rotated["keyName"], rotated["status"]) == (name, "active")
    for worker in (admin, worker2):
        assert worker.provider_exchange(old) == 40101
        assert worker.provider_exchange(new) == 200
    # With a grace period, the previous secret works until it ends.
    newer = admin.post(f"/keys/{name}/rotate", {"grace": 60_000}).get_json()["key"]
    assert admin.provider_exchange(new) == 200
    assert admin.provider_exchange(newer) == 200
    clock.advance(60_001)
    assert admin.provider_exchange(new) == 40101
    assert admin.provider_exchange(newer) == 200
    rotations = [e for e in key_events(admin) if e["event"] == "key.rotated"]
    assert [(e["actor"], e["detail"]["grace"]) for e in rotations] == [
        ("admin:alice", 0),
        ("admin:alice", 60_000),
    ]


def test_revoke_makes_the_provider_refuse_the_key_at_once(
    admin: Admin, make_admin: MakeAdmin
) -> None:
    worker2 = make_admin()
    admin.login()
    full = admin.create()["key"]
    name = full.partition(":")[0]
    assert worker2.provider_exchange(full) == 200
    response = admin.post(f"/keys/{name}/revoke", {"reason": "leaked in a CI log"})
    assert response.status_code == 200
    revoked = response.get_json()
    assert "key" not in revoked
    assert (revoked["status"], revoked["revokedReason"], revoked["revoked"]) == (
        "revoked",
        "leaked in a CI log",
        START,
    )
    assert worker2.provider_exchange(full) == 40131
    assert admin.list_keys("revoked") == [revoked]
    assert [k["keyName"] for k in admin.list_keys("active")] == [KEY_NAME]
    again = admin.post(f"/keys/{name}/revoke", {"reason": "twice"})
    assert "already revoked" in error_of(again, 409, 40900)
    error_of(admin.post(f"/keys/{name}/rotate", {}), 409, 40900)
    [event] = [e for e in key_events(admin) if e["event"] == "key.revoked"]
    assert event["actor"] == "admin:alice"
    assert event["detail"] == {"reason": "leaked in a CI log"}


def test_a_static_key_is_listed_but_cannot_be_changed(admin: Admin) -> None:
    admin.login()
    [static] = admin.list_keys()
    # The CLI's JSON of the key (one implementation), with no secret.
    with admin.app.app_context():
        assert static == admin.provider.keys.key_dict(KEY_NAME, START)
    assert (static["display"], static["source"], static["status"]) == (
        f"{KEY_NAME}:…",
        "config",
        "active",
    )
    for path, body in [
        (f"/keys/{KEY_NAME}/rotate", {}),
        (f"/keys/{KEY_NAME}/revoke", {"reason": "r"}),
    ]:
        assert "comes from configuration" in error_of(admin.post(path, body), 409, 40900)
    assert admin.list_keys() == [static]
    assert admin.provider_exchange(KEY) == 200
    assert key_events(admin) == []


# -- bad input: 4xx JSON, nothing changed ------------------------------------------------

HUGE = "x" * 20_000


@pytest.mark.parametrize(
    ("path", "send", "status", "code", "says"),
    [
        ("/keys", {"data": "{not json"}, 400, 40001, "not valid JSON"),
        ("/keys", {"data": '["name"]'}, 400, 40001, "JSON object"),
        ("/keys", {"data": "null"}, 400, 40001, "JSON object"),
        ("/keys", {"data": ""}, 400, 40001, "empty"),
        ("/keys", {"data": '{"name": "k"}', "content_type": "text/plain"}, 415, 41500, "json"),
        (
            "/keys",
            {"data": "name=k", "content_type": "application/x-www-form-urlencoded"},
            415,
            41500,
            "json",
        ),
        ("/keys", {"body": {"name": "k", "admin": True}}, 400, 40003, "unknown field 'admin'"),
        ("/keys", {"body": {}}, 400, 40003, "needs a name"),
        ("/keys", {"body": {"name": 42}}, 400, 40003, "needs a name"),
        ("/keys", {"body": {"name": ["k"]}}, 400, 40003, "needs a name"),
        ("/keys", {"body": {"name": " "}}, 400, 40003, "needs a name"),
        ("/keys", {"body": {"name": "x" * 201}}, 400, 40003, "at most 200"),
        ("/keys", {"body": {"name": "a\u0000b"}}, 400, 40003, "printable"),
        ("/keys", {"body": {"name": "k", "capability": "not json"}}, 400, 40000, "apabilit"),
        ("/keys", {"body": {"name": "k", "capability": [1]}}, 400, 40000, "apabilit"),
        ("/keys", {"body": {"name": "k", "capability": {}}}, 400, 40003, "grants nothing"),
        ("/keys", {"body": {"name": "k", "expires": "tomorrow"}}, 400, 40003, "expires"),
        ("/keys", {"body": {"name": "k", "expires": True}}, 400, 40003, "expires"),
        ("/keys", {"body": {"name": "k", "expires": 1.5}}, 400, 40003, "expires"),
        ("/keys", {"body": {"name": "k", "expires": START}}, 400, 40003, "expires"),
        ("/keys", {"body": {"name": HUGE}}, 413, 41300, "too large"),
        ("/keys/{key}/rotate", {"body": {"grace": "1h"}}, 400, 40003, "grace"),
        ("/keys/{key}/rotate", {"body": {"grace": -1}}, 400, 40003, "grace"),
        ("/keys/{key}/rotate", {"body": {"grace": 31 * 86_400_000}}, 400, 40003, "grace"),
        ("/keys/{key}/rotate", {"body": {"graceMs": 5}}, 400, 40003, "unknown field 'graceMs'"),
        ("/keys/{key}/rotate", {"data": "[]"}, 400, 40001, "JSON object"),
        ("/keys/{key}/revoke", {"body": {}}, 400, 40003, "needs a reason"),
        ("/keys/{key}/revoke", {"body": {"reason": 7}}, 400, 40003, "needs a reason"),
        ("/keys/{key}/revoke", {"body": {"reason": "r" * 501}}, 400, 40003, "at most 500"),
        ("/keys/{key}/revoke", {"body": {"reason": "r", "why": 1}}, 400, 40003, "unknown field"),
        ("/keys/{key}/revoke", {"body": {"reason": HUGE}}, 413, 41300, "too large"),
        ("/keys/tokenreq.nope/rotate", {"body": {}}, 404, 40400, "No managed key"),
        ("/keys/tokenreq.nope/revoke", {"body": {"reason": "r"}}, 404, 40400, "No managed key"),
        ("/keys/%00%FF/revoke", {"body": {"reason": "r"}}, 404, 40400, "No managed key"),
        ("/keys/" + "k" * 300 + "/rotate", {"body": {}}, 404, 40400, "No managed key"),
    ],
)
def test_bad_input_is_a_4xx_json_error_and_changes_nothing(
    admin: Admin, path: str, send: dict[str, Any], status: int, code: int, says: str
) -> None:
    admin.login()
    key = admin.create()
    before, events = admin.list_keys(), key_events(admin)
    kwargs = dict(send)
    body = kwargs.pop("body", None)
    if "data" in kwargs:
        kwargs.setdefault("content_type", "application/json")
    response = admin.post(path.format(key=key["keyName"]), body, **kwargs)
    message = error_of(response, status, code)
    assert says.lower() in message.lower()
    assert HUGE not in message
    assert admin.list_keys() == before
    assert key_events(admin) == events


@pytest.mark.parametrize(
    ("query", "says"),
    [("status=gone", "status must be one of"), ("status=", "status must be one of")],
)
def test_bad_list_queries_are_400(admin: Admin, query: str, says: str) -> None:
    admin.login()
    assert says in error_of(admin.get(f"/keys?{query}"), 400, 40003)


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "1e3", "²", ""])
def test_bad_audit_limits_are_400(admin: Admin, limit: str) -> None:
    admin.login()
    assert "limit" in error_of(admin.get(f"/audit?limit={limit}"), 400, 40003)


# -- the audit view ----------------------------------------------------------------------


def test_the_audit_view_lists_ticket_and_key_events_without_secrets(
    admin: Admin, clock: FakeClock
) -> None:
    tickets_seen = [admin.ticket("mallory")]
    clock.advance(1)
    admin.exchange(tickets_seen[0] + "x")  # refused: invalid
    clock.advance(1)
    tickets_seen.append(admin.ticket("alice"))
    clock.advance(1)
    response = admin.exchange(tickets_seen[-1])
    csrf = response.get_json()["csrf"]
    admin.csrf = csrf
    clock.advance(1)
    full = admin.create("audited")["key"]
    name = full.partition(":")[0]
    clock.advance(1)
    rotated = admin.post(f"/keys/{name}/rotate", {}).get_json()["key"]
    clock.advance(1)
    admin.post(f"/keys/{name}/revoke", {"reason": "done"})
    response = admin.get("/audit")
    assert response.status_code == 200
    events = response.get_json()["events"]
    assert [e["event"] for e in events] == [
        "key.revoked",
        "key.rotated",
        "key.created",
        "ticket.exchanged",
        "ticket.issued",
        "ticket.refused",
        "ticket.issued",
    ]
    assert {e["actor"] for e in events} == {"admin:alice", "admin:mallory", None}
    text = response.get_data(as_text=True)
    for secret in (*tickets_seen, full, rotated, full.partition(":")[2], csrf, SECRET_KEY):
        assert secret not in text
    assert not SECRET_LIKE.search(text)
    assert list(events[0]) == list(AuditEvent("any.event", 0).to_dict())  # the table's columns
    limited = admin.get("/audit?limit=2").get_json()["events"]
    assert [e["event"] for e in limited] == ["key.revoked", "key.rotated"]


def test_no_secret_or_ticket_in_log_lines(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        ticket = admin.ticket()
        admin.exchange(ticket)
        admin.exchange(ticket)  # refused: used
        admin.csrf = admin.login()["csrf"]
        full = admin.create()["key"]
        rotated = admin.post(f"/keys/{full.partition(':')[0]}/rotate", {}).get_json()["key"]
    for secret in (ticket, full, rotated, admin.csrf or "?"):
        assert secret not in caplog.text


# -- failing closed ----------------------------------------------------------------------


def test_a_database_down_is_503_for_the_api(tmp_path: Path, clock: FakeClock) -> None:
    folder = tmp_path / "db"
    folder.write_text("a file where the database folder should be")
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
        TOKENREQ_DATABASE_URL=f"sqlite:///{folder / 'keys.sqlite3'}",
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    admin = Admin(app, provider, KeyAdmin(app))
    # No ticket without its audit row: issue_ticket fails closed too.
    with app.app_context(), pytest.raises(StoreUnavailable):
        admin.admin.issue_ticket("alice")
    folder.unlink()
    folder.mkdir()
    admin.login()
    admin.create()
    folder_db = folder / "keys.sqlite3"
    folder_db.unlink()
    for suffix in ("-wal", "-shm", changes.SUFFIX):
        (folder / f"keys.sqlite3{suffix}").unlink(missing_ok=True)
    folder.rmdir()
    folder.write_text("gone again")
    provider.close()  # drop pooled connections to the old file
    error_of(admin.get("/keys"), 503, 50003)
    error_of(admin.post("/keys", {"name": "k"}), 503, 50003)
    error_of(admin.get("/audit"), 503, 50003)


@pytest.mark.postgres
def test_postgres_lost_is_503_for_the_api_and_the_exchange(
    pg_schema: str, clock: FakeClock
) -> None:
    url = sa.make_url(pg_schema)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
        TOKENREQ_DATABASE_URL=through,
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    admin = Admin(app, provider, KeyAdmin(app))
    admin.login()
    full = admin.create()["key"]
    ticket = admin.ticket()
    proxy.cut()
    error_of(admin.get("/keys"), 503, 50003)
    error_of(admin.post("/keys", {"name": "k"}), 503, 50003)
    error_of(admin.post(f"/keys/{full.partition(':')[0]}/revoke", {"reason": "r"}), 503, 50003)
    error_of(admin.get("/audit"), 503, 50003)
    # The exchange cannot write its audit row: no session.
    response = admin.exchange(ticket, app.test_client())
    error_of(response, 503, 50003)
    assert "Set-Cookie" not in response.headers
    provider.close()


def test_key_events_in_the_table_are_written_by_the_key_store(admin: Admin) -> None:
    """The key page adds no audit writer of its own for key changes: one row per change."""
    admin.login()
    full = admin.create()["key"]
    engine = sa.create_engine(admin.app.config["TOKENREQ_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(models.audit.c.event).where(models.audit.c.event.like("key.%"))
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert rows == ["key.created"]
    assert full.partition(":")[2] not in json.dumps(admin.audit())


def test_tickets_module_rejects_payloads_it_did_not_make(admin: Admin) -> None:
    """Signed with the right key and salt but the wrong shape: still 'ticket invalid'."""
    with admin.app.app_context():
        signer = tickets.serializer(admin.app.config, tickets.SALT)
    for payload in [
        {"a": "alice", "s": ["keys:read"], "n": "nonce", "x": "soon"},
        {"a": "alice", "s": ["keys:root"], "n": "nonce", "x": START + 1},
        {"a": "", "s": ["keys:read"], "n": "nonce", "x": START + 1},
        {"a": "alice", "s": "keys:read", "n": "nonce", "x": START + 1},
        {"a": "alice", "s": ["keys:read"], "n": "", "x": START + 1},
        {"a": "alice", "s": ["keys:read"], "n": "nonce", "x": START + 1, "extra": 1},
        ["alice"],
    ]:
        forged = str(signer.dumps(payload))
        assert error_of(admin.exchange(forged), 401, 40100).startswith("ticket invalid")
    session_signer = tickets.serializer(admin.app.config, "flask-tokenreq.admin.session")
    as_session = str(session_signer.dumps({"a": "x", "s": ["keys:read"], "n": "n", "x": START + 1}))
    assert error_of(admin.exchange(as_session), 401, 40100).startswith("ticket invalid")


def test_without_a_database_static_keys_are_listed_and_changes_refused(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY=SECRET_KEY, TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY]
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    admin = Admin(app, provider, KeyAdmin(app))
    admin.login()
    assert [k["keyName"] for k in admin.list_keys()] == [KEY_NAME]
    assert "Managed keys are off" in error_of(admin.post("/keys", {"name": "k"}), 409, 40900)
    assert admin.get("/audit").get_json() == {"events": []}
    assert not (tmp_path / "instance").exists()  # no database was made


def test_the_page_files_ship_in_the_package() -> None:
    """Every file of the page (templates, static) matches setup.cfg's package data."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    patterns = parser["options.package_data"]["flask_tokenreq.admin"].split(",")
    base = ROOT / "flask_tokenreq" / "admin"
    shipped = {path for pattern in patterns for path in base.glob(pattern.strip())}
    on_disk = {path for folder in ("templates", "static") for path in (base / folder).rglob("*")}
    assert {path for path in on_disk if path.is_file()} <= shipped
    assert base / "templates" / "tokenreq_admin" / "page.html" in shipped


def test_the_testing_recipe_of_docs_admin_md(tmp_path: Path, tokenreq_clock: Any) -> None:
    """docs/admin.md's recipe: the plugin's clock moves tickets and sessions too."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(warn=False))  # no clock of its own
    KeyAdmin(app)
    client = app.test_client()
    with app.app_context():
        ticket = app.extensions["tokenreq_admin"].issue_ticket("carol")
    opened = client.get(f"/tokenreq/admin/session/ticket/exchange?ticket={ticket}")
    assert opened.status_code == 200
    csrf = opened.get_json()["csrf"]
    created = client.post(
        "/tokenreq/admin/api/keys", json={"name": "CI Key"}, headers={"X-TokenReq-CSRF": csrf}
    )
    assert created.status_code == 201
    tokenreq_clock.advance(15 * 60_000 + 1)  # the session is over
    assert client.get("/tokenreq/admin/api/keys").status_code == 401
    provider.close()


def test_docs_admin_md_says_where_a_ticket_and_the_csrf_value_show(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/admin.md's security model against a real server: the ticket rides in the
    exchange's query string, so the access log has it; the answer carries the CSRF value."""
    import requests

    from tests.servers import serve_app

    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(warn=False))
    KeyAdmin(app)
    with app.app_context():
        ticket = app.extensions["tokenreq_admin"].issue_ticket("carol")
    with caplog.at_level(logging.INFO, logger="werkzeug"), serve_app(app) as url:
        opened = requests.get(
            f"{url}/tokenreq/admin/session/ticket/exchange", params={"ticket": ticket}, timeout=10
        )
    provider.close()
    assert opened.status_code == 200
    assert opened.json()["csrf"]
    assert any(ticket in record.getMessage() for record in caplog.records)  # the access log

    docs = " ".join((ROOT / "docs" / "admin.md").read_text().split())
    assert "No row, answer or log line holds a ticket" not in docs
    assert "exchange's answer carries the session's CSRF value" in docs
    assert "access logs that record query strings" in docs
    assert "single use and expires 60 s" in docs
