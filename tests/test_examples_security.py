"""The attack findings against the example apps (issue 8 §5), one test each.

The examples are what users copy. Found by an attack harness and closed:

- a chunked body of 100 MB to ``/login`` (or the token endpoint) was read whole;
- deeply nested JSON, a lone surrogate or wrong types at ``/login`` gave a 500;
- login CSRF: a cross-site form POST signed the browser in;
- ``/login`` had no rate limit;
- signing out did not end a copied session cookie;
- the session cookie had no ``SameSite`` and no ``Secure`` switch.

Bodies are measured where it matters: a counting WSGI middleware records how
many bytes the app pulled from ``wsgi.input``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from examples import demo, issuer_app, provider_app
from tests.conftest import KEY, FakeClock
from tests.servers import run_gunicorn, serve_app

SESSION_KEY = "security-test-session-key-0123456789abcdef"
SIGNING_SECRET = "security-test-signing-secret-0123456789abcdef"
TOKEN = "/api/tokenreq/token"
ALICE = {"username": "alice", "password": "alice-password"}
#: How much a hostile client offers: 100 MB, in 64 KiB chunks.
HOSTILE_BYTES = 100 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TOKENREQ_* / FLASK_* settings from the outside environment."""
    import os

    for name in list(os.environ):
        if name.startswith(("TOKENREQ_", "FLASK_")) and not name.startswith("TOKENREQ_TEST"):
            monkeypatch.delenv(name)


def make_issuer(tmp_path: Path, **overrides: Any) -> Flask:
    config = {
        "SECRET_KEY": SESSION_KEY,
        "TOKENREQ_KEY": KEY,
        "LOGIN_SESSIONS_DATABASE": f"sqlite:///{tmp_path / 'sessions.sqlite3'}",
        **overrides,
    }
    return issuer_app.create_app(config)


def make_demo(tmp_path: Path, **overrides: Any) -> Flask:
    config = {
        "SECRET_KEY": SESSION_KEY,
        "TOKENREQ_KEY": KEY,
        "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
        "TOKENREQ_DEMO_POLL_MS": 0,
        **overrides,
    }
    return demo.create_app(config, instance_path=tmp_path / "demo-instance")


def make_provider(tmp_path: Path) -> Flask:
    return provider_app.create_app(
        {
            "TOKENREQ_PROVIDER_KEYS": [KEY],
            "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
            "TOKENREQ_NONCE_STORE": "memory://",
            "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp_path / 'messages.sqlite3'}",
        },
        instance_path=str(tmp_path),
    )


APPS: dict[str, Callable[[Path], Flask]] = {"issuer_app": make_issuer, "demo": make_demo}


def error_of(response: requests.Response | Any, status: int, code: int) -> str:
    """Assert an Ably error answer (JSON, never HTML); returns its message."""
    assert response.status_code == status, response.text if hasattr(response, "text") else ""
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.text if hasattr(response, "text") else response.get_data())
    assert body["error"]["code"] == code
    assert body["error"]["statusCode"] == status
    message: str = body["error"]["message"]
    return message


# -- bounded bodies ------------------------------------------------------------------------


class CountingInput:
    """Counts what an app reads from ``wsgi.input`` (the server-side measure)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.read_bytes = 0

    def wrap(self, app: Flask) -> Callable[..., Any]:
        counter = self

        class Stream:
            def __init__(self, raw: Any) -> None:
                self.raw = raw

            def read(self, size: int | None = -1) -> bytes:
                data: bytes = self.raw.read() if size is None else self.raw.read(size)
                with counter.lock:
                    counter.read_bytes += len(data)
                return data

            def readline(self, size: int = -1) -> bytes:
                data: bytes = self.raw.readline(size)
                with counter.lock:
                    counter.read_bytes += len(data)
                return data

        def middleware(environ: dict[str, Any], start_response: Any) -> Any:
            environ["wsgi.input"] = Stream(environ["wsgi.input"])
            return app(environ, start_response)

        return middleware


def hostile_body(prefix: bytes) -> Iterator[bytes]:
    """A chunked body that keeps growing to 100 MB (requests sends a generator chunked)."""
    yield prefix
    sent = len(prefix)
    while sent < HOSTILE_BYTES:
        yield b"a" * CHUNK
        sent += CHUNK


def post_chunked(url: str, content_type: str, prefix: bytes, **kwargs: Any) -> requests.Response:
    return requests.post(
        url,
        data=hostile_body(prefix),
        headers={"Content-Type": content_type, **kwargs.pop("headers", {})},
        timeout=60,
        **kwargs,
    )


@pytest.mark.parametrize("make_app", APPS.values(), ids=APPS.keys())
@pytest.mark.parametrize(
    ("content_type", "prefix"),
    [
        ("application/x-www-form-urlencoded", b"username=alice&password="),
        ("application/json", b'{"username": "alice", "password": "'),
    ],
    ids=["form", "json"],
)
def test_chunked_100mb_login_is_refused_before_it_is_read(
    tmp_path: Path, make_app: Callable[[Path], Flask], content_type: str, prefix: bytes
) -> None:
    app = make_app(tmp_path)
    counter = CountingInput()
    with serve_app(counter.wrap(app)) as url:
        response = post_chunked(url + "/login", content_type, prefix)
    assert response.status_code == 413
    # The sign-in body is read at most 4 KiB + 1 byte; the app bound is far below 100 MB.
    assert counter.read_bytes <= 4097
    assert counter.read_bytes <= app.config["MAX_CONTENT_LENGTH"]


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_chunked_100mb_token_request_is_refused_before_it_is_read(
    tmp_path: Path, signed_in: bool
) -> None:
    app = make_issuer(tmp_path)
    counter = CountingInput()
    with serve_app(counter.wrap(app)) as url:
        session = requests.Session()
        if signed_in:
            session.post(url + "/login", data=ALICE, timeout=10).raise_for_status()
        response = session.post(
            url + TOKEN,
            data=hostile_body(b"ttl=60000&capability="),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=60,
        )
    assert 400 <= response.status_code < 500
    if signed_in:
        error_of(response, 413, response.json()["error"]["code"])
    assert counter.read_bytes <= app.config["MAX_CONTENT_LENGTH"]


@pytest.mark.parametrize("path", ["/keys/appid.keyid/requestToken", "/channels/news/messages"])
def test_chunked_100mb_to_the_provider_is_refused_before_it_is_read(
    tmp_path: Path, path: str
) -> None:
    app = make_provider(tmp_path)
    counter = CountingInput()
    with serve_app(counter.wrap(app)) as url:
        response = post_chunked(url + path, "application/json", b'{"keyName": "')
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"] == "application/json"
    assert counter.read_bytes <= app.config["MAX_CONTENT_LENGTH"]


# -- no 5xx for client input ------------------------------------------------------------------

BAD_LOGINS: dict[str, tuple[str, bytes, int, int]] = {
    # name: (content type, body, status, Ably code)
    "nested-json": ("application/json", b"[" * 2000 + b"]" * 2000, 400, 40001),
    "nested-object": (
        "application/json",
        b'{"username": ' + b"[" * 1500 + b"]" * 1500 + b"}",
        400,
        40001,
    ),
    "json-list": ("application/json", b'["alice", "alice-password"]', 400, 40001),
    "json-string": ("application/json", b'"alice"', 400, 40001),
    "not-json": ("application/json", b"{username: alice", 400, 40001),
    "number-username": ("application/json", b'{"username": 1, "password": "x"}', 400, 40001),
    "list-password": ("application/json", b'{"username": "alice", "password": []}', 400, 40001),
    "null-password": ("application/json", b'{"username": "alice", "password": null}', 400, 40001),
    "lone-surrogate": (
        "application/json",
        b'{"username": "alice", "password": "\\ud800"}',
        401,
        40100,
    ),
    "bad-utf8-form": ("application/x-www-form-urlencoded", b"username=\xff&password=x", 400, 40001),
    "too-many-fields": (
        "application/x-www-form-urlencoded",
        b"&".join(b"f%d=1" % i for i in range(100)),
        400,
        40001,
    ),
    "text-plain": ("text/plain", b"username=alice&password=alice-password", 415, 41500),
    "too-large": (
        "application/x-www-form-urlencoded",
        b"username=alice&x=" + b"a" * 5000,
        413,
        41300,
    ),
}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"), BAD_LOGINS.values(), ids=BAD_LOGINS.keys()
)
def test_bad_login_input_is_a_4xx_json_error_never_a_500(
    tmp_path: Path, content_type: str, body: bytes, status: int, code: int
) -> None:
    client = make_issuer(tmp_path).test_client()
    response = client.post("/login", data=body, content_type=content_type)
    error_of(response, status, code)
    error_of(client.get(TOKEN), 401, 40100)  # nobody signed in


def test_bad_login_input_to_the_demo_is_a_4xx_page(tmp_path: Path) -> None:
    client = make_demo(tmp_path, LOGIN_RATE_LIMIT="100 per day").test_client()
    for content_type, body, status, _code in BAD_LOGINS.values():
        response = client.post("/login", data=body, content_type=content_type)
        assert response.status_code == status
        assert response.mimetype == "text/html"
        assert b"Sign in" in response.data


# -- login CSRF -----------------------------------------------------------------------------

CROSS_SITE = {
    "other-origin": {"Origin": "https://evil.example"},
    "null-origin": {"Origin": "null"},
    "other-port": {"Origin": "http://localhost:1"},
    "fetch-cross-site": {"Sec-Fetch-Site": "cross-site"},
    "fetch-same-site": {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another site
    "both": {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
}


@pytest.mark.parametrize("headers", CROSS_SITE.values(), ids=CROSS_SITE.keys())
def test_cross_site_login_post_is_refused(tmp_path: Path, headers: dict[str, str]) -> None:
    """A hostile page's auto-submitting form must not sign the visitor in (login CSRF)."""
    client = make_issuer(tmp_path).test_client()
    response = client.post("/login", data=ALICE, headers=headers)
    assert "Cross-site sign-in refused" in error_of(response, 403, 40300)
    assert "Set-Cookie" not in response.headers
    error_of(client.get(TOKEN), 401, 40100)


@pytest.mark.parametrize("headers", CROSS_SITE.values(), ids=CROSS_SITE.keys())
def test_cross_site_login_post_to_the_demo_is_refused(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    client = make_demo(tmp_path).test_client()
    response = client.post("/login", data={**ALICE, "next": "/"}, headers=headers)
    assert response.status_code == 403
    assert b"Cross-site sign-in refused" in response.data
    error_of(client.get(TOKEN), 401, 40100)


SAME_SITE = {
    "no-headers": {},  # scripts, curl, the ably SDK tests: no browser page involved
    "same-origin": {"Origin": "http://localhost"},
    "fetch-same-origin": {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
    "fetch-none": {"Sec-Fetch-Site": "none"},  # typed or bookmarked by the user
}


@pytest.mark.parametrize("headers", SAME_SITE.values(), ids=SAME_SITE.keys())
def test_same_site_and_non_browser_logins_work(tmp_path: Path, headers: dict[str, str]) -> None:
    client = make_issuer(tmp_path).test_client()
    response = client.post("/login", data=ALICE, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert client.get(TOKEN).get_json()["clientId"] == "alice"


def test_cross_site_logout_is_refused(tmp_path: Path) -> None:
    client = make_issuer(tmp_path).test_client()
    client.post("/login", data=ALICE)
    error_of(client.post("/logout", headers={"Origin": "https://evil.example"}), 403, 40300)
    assert client.get(TOKEN).status_code == 200


# -- rate limit -----------------------------------------------------------------------------


def test_failed_logins_are_rate_limited(tmp_path: Path) -> None:
    """Past the limit even the right password gets 429, with Retry-After."""
    client = make_issuer(tmp_path, LOGIN_RATE_LIMIT="3 per day").test_client()
    for _ in range(3):
        error_of(client.post("/login", data={"username": "alice", "password": "guess"}), 401, 40100)
    response = client.post("/login", data=ALICE)
    error_of(response, 429, 42900)
    assert int(response.headers["Retry-After"]) > 0
    error_of(client.get(TOKEN), 401, 40100)


def test_successful_logins_do_not_count_against_the_limit(tmp_path: Path) -> None:
    client = make_issuer(tmp_path, LOGIN_RATE_LIMIT="2 per day").test_client()
    for _ in range(5):
        assert client.post("/login", data=ALICE).status_code == 200
    for _ in range(2):
        error_of(client.post("/login", data={"username": "bob", "password": "guess"}), 401, 40100)
    error_of(client.post("/login", data=ALICE), 429, 42900)


def test_demo_login_is_rate_limited(tmp_path: Path) -> None:
    client = make_demo(tmp_path, LOGIN_RATE_LIMIT="2 per day").test_client()
    for _ in range(2):
        assert client.post("/login", data={"username": "bob", "password": "x"}).status_code == 401
    response = client.post("/login", data={**ALICE, "next": "/"})
    assert response.status_code == 429
    assert b"(42900)" in response.data


def test_rate_limit_is_configured_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_LOGIN_RATE_LIMIT", "1 per day")
    client = make_issuer(tmp_path).test_client()
    error_of(client.post("/login", data={"username": "bob", "password": "x"}), 401, 40100)
    error_of(client.post("/login", data=ALICE), 429, 42900)


def test_a_malformed_rate_limit_is_a_config_error(tmp_path: Path) -> None:
    from flask_tokenreq.errors import ConfigError

    with pytest.raises(ConfigError, match="LOGIN_RATE_LIMIT"):
        make_issuer(tmp_path, LOGIN_RATE_LIMIT="ten a minute")


# -- sign-out ends the session ------------------------------------------------------------


@pytest.mark.parametrize("make_app", APPS.values(), ids=APPS.keys())
def test_logout_ends_a_copied_session_cookie(
    tmp_path: Path, make_app: Callable[[Path], Flask]
) -> None:
    app = make_app(tmp_path)
    browser = app.test_client()
    assert browser.post("/login", data=ALICE).status_code in (200, 303)
    stolen = browser.get_cookie("session")
    assert stolen is not None
    thief = app.test_client()
    thief.set_cookie("session", stolen.value)
    assert thief.get(TOKEN).status_code == 200  # a copy works while the session lives

    assert browser.post("/logout").status_code in (200, 303)
    error_of(thief.get(TOKEN), 401, 40100)  # ... and stops when its owner signs out
    error_of(browser.get(TOKEN), 401, 40100)


def test_logout_ends_the_session_in_every_gunicorn_worker(tmp_path: Path) -> None:
    """Sessions live in one SQLite file that all workers share."""
    env = {
        "TOKENREQ_KEY": KEY,
        "FLASK_SECRET_KEY": SESSION_KEY,
        "FLASK_LOGIN_SESSIONS_DATABASE": f"sqlite:///{tmp_path / 'sessions.sqlite3'}",
    }
    with run_gunicorn("examples.issuer_app:create_app()", env, workers=3, ready_path=TOKEN) as app:
        browser = requests.Session()
        browser.post(app.url + "/login", data=ALICE, timeout=10).raise_for_status()
        cookie = browser.cookies["session"]
        for _ in range(6):  # several workers answer: each knows the session
            assert requests.get(app.url + TOKEN, cookies={"session": cookie}, timeout=10).ok
        browser.post(app.url + "/logout", timeout=10).raise_for_status()
        for _ in range(6):  # ... and each knows it ended
            response = requests.get(app.url + TOKEN, cookies={"session": cookie}, timeout=10)
            error_of(response, 401, 40100)
        assert "Traceback" not in app.log_text()


def test_a_session_ends_after_its_lifetime(tmp_path: Path) -> None:
    clock = FakeClock()
    app = issuer_app.create_app(
        {
            "SECRET_KEY": SESSION_KEY,
            "TOKENREQ_KEY": KEY,
            "LOGIN_SESSIONS_DATABASE": f"sqlite:///{tmp_path / 'sessions.sqlite3'}",
            "LOGIN_SESSION_LIFETIME": 3600,
        },
        now_ms=clock,
    )
    client = app.test_client()
    client.post("/login", data=ALICE)
    clock.advance(3600 * 1000 - 1)
    assert client.get(TOKEN).status_code == 200
    clock.advance(1)
    error_of(client.get(TOKEN), 401, 40100)


def test_the_session_store_keeps_no_usable_session_id(tmp_path: Path) -> None:
    import sqlite3

    app = make_issuer(tmp_path)
    client = app.test_client()
    client.post("/login", data=ALICE)
    from flask.sessions import SecureCookieSessionInterface

    cookie = client.get_cookie("session")
    assert cookie is not None
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    session_id = serializer.loads(cookie.value)["_user_id"]
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as db:
        rows = db.execute("select id_hash, username from example_login_sessions").fetchall()
    assert len(rows) == 1
    assert rows[0][1] == "alice"
    assert session_id not in rows[0][0]  # only its SHA-256 is stored


# -- the session cookie ---------------------------------------------------------------------


@pytest.mark.parametrize("make_app", APPS.values(), ids=APPS.keys())
def test_session_cookie_is_samesite_lax_and_httponly(
    tmp_path: Path, make_app: Callable[[Path], Flask]
) -> None:
    response = make_app(tmp_path).test_client().post("/login", data=ALICE)
    cookie = response.headers["Set-Cookie"]
    assert "; SameSite=Lax" in cookie
    assert "; HttpOnly" in cookie
    assert "; Secure" not in cookie  # plain HTTP in development: a Secure cookie would be lost


def test_session_cookie_secure_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind HTTPS: ``FLASK_SESSION_COOKIE_SECURE=true``."""
    monkeypatch.setenv("FLASK_SESSION_COOKIE_SECURE", "true")
    response = make_issuer(tmp_path).test_client().post("/login", data=ALICE)
    assert "; Secure" in response.headers["Set-Cookie"]
