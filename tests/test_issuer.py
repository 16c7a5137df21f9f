"""The issuer blueprint, through Flask's test client with real flask-login.

Every response is checked for the secret (see :class:`SecretCheckingClient`),
and every test's log output, captured at DEBUG, too.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jwt
import pytest
from flask import Flask, Request
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin, login_user
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from flask_tokenreq import Capability, TokenRequest, verify_mac
from flask_tokenreq.errors import ConfigError, Forbidden, TokenReqError
from flask_tokenreq.issuer import TokenIssuer
from flask_tokenreq.testing import ManualClock

from .conftest import KEY, KEY_NAME, OTHER_SECRET, SECRET, FakeClock, unavailable

TOKEN = "/tokenreq/token"
SESSION_KEY = "test-session-key-0123456789abcdef0123456789"
TR_KEYS = {"keyName", "ttl", "capability", "clientId", "timestamp", "nonce", "mac"}

ALICE_CAP = {"*": ["subscribe", "publish", "history"]}
BOB_CAP = {"*": ["subscribe", "history"]}
#: username -> (clientId the loader returns, capability the loader returns)
USERS: dict[str, tuple[str | None, Any]] = {
    "alice": ("alice", ALICE_CAP),
    "bob": ("bob", BOB_CAP),
    "carol": ("*", {"chat:*": ["*"]}),  # may act as any clientId
    "dave": (None, {"news": ["subscribe"]}),  # no clientId
    "eve": ("eve", None),  # may have nothing
}
#: project -> (users allowed, the project's capability)
PROJECTS = {"p1": ({"alice", "bob"}, {"p1:*": ["*"]}), "p2": ({"alice"}, {"p2:*": ["*"]})}


def _assert_no_secret(response: TestResponse) -> None:
    body = response.get_data(as_text=True)
    assert SECRET not in body
    for name, value in response.headers.items():
        assert SECRET not in name
        assert SECRET not in value


class SecretCheckingClient(FlaskClient):
    """A test client that fails on any response carrying the secret."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        _assert_no_secret(response)
        return response


class User(UserMixin):
    def __init__(self, username: str) -> None:
        self.id = username


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No TOKENREQ_* from the outside environment; no secret in any log line."""
    import os

    for name in list(os.environ):
        if name.startswith(("TOKENREQ_", "FLASK_")) and not name.startswith("TOKENREQ_TEST"):
            monkeypatch.delenv(name)
    caplog.set_level(logging.DEBUG)
    yield
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()


def base_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app with flask-login and a test-only login route, no issuer."""
    app = Flask("test_issuer")
    # TOKENREQ_MIN_TTL lowered so tests can ask for short ttls; the default
    # floor has tests of its own (test_ttl_below_the_minimum_*).
    app.config.update(TESTING=True, SECRET_KEY=SESSION_KEY, TOKENREQ_KEY=KEY, TOKENREQ_MIN_TTL=1)
    app.config.update(config or {})
    app.test_client_class = SecretCheckingClient
    login = LoginManager(app)
    login.login_view = "login_page"  # would redirect if the issuer used login_required

    @login.user_loader
    def load_user(user_id: str) -> User | None:
        return User(user_id) if user_id in USERS else None

    @app.post("/test-login/<name>")
    def login_page(name: str) -> str:
        login_user(User(name))
        return "ok"

    return app


def make_app(
    clock: Any = None,
    config: Mapping[str, Any] | None = None,
    *,
    hooks: bool = True,
    **issuer_kwargs: Any,
) -> tuple[Flask, TokenIssuer]:
    app = base_app(config)
    if clock is not None:
        issuer_kwargs.setdefault("now_ms", clock)
    issuer = TokenIssuer(**issuer_kwargs)
    if hooks:

        @issuer.client_id_loader
        def client_id(user: User) -> str | None:
            return USERS[user.id][0]

        @issuer.capability_loader
        def capability(user: User, request: Request) -> Any:
            return USERS[user.id][1]

        @issuer.project_loader
        def project(user: User, project_id: str) -> Any:
            users, cap = PROJECTS.get(project_id, (set(), None))
            return cap if user.id in users else None

    issuer.init_app(app)
    return app, issuer


def client_for(app: Flask, user: str | None = "alice") -> FlaskClient:
    client = app.test_client()
    if user is not None:
        assert client.post(f"/test-login/{user}").status_code == 200
    return client


@pytest.fixture
def app(clock: FakeClock) -> Flask:
    return make_app(clock)[0]


@pytest.fixture
def alice(app: Flask) -> FlaskClient:
    return client_for(app, "alice")


def error_of(response: TestResponse, status: int, code: int) -> dict[str, Any]:
    """Assert an Ably error response and return its error object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Ably-ErrorCode"] == str(code)
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["statusCode"] == status
    assert isinstance(error["message"], str)
    assert error["message"]
    return error  # type: ignore[no-any-return]


def token_request_of(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) <= TR_KEYS
    assert verify_mac(body, SECRET)
    TokenRequest.from_dict(body)
    return body  # type: ignore[no-any-return]


# -- authentication ------------------------------------------------------------


@pytest.mark.parametrize("login_disabled", [False, True])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_anonymous_gets_401_json_never_a_redirect(
    clock: FakeClock, login_disabled: bool, method: str
) -> None:
    app, _ = make_app(clock, {"LOGIN_DISABLED": login_disabled})
    response = client_for(app, None).open(TOKEN, method=method)
    error = error_of(response, 401, 40100)
    assert "Location" not in response.headers
    assert "log" in error["message"].lower()


def test_authorize_hook_refuses_with_403(clock: FakeClock) -> None:
    app, issuer = make_app(clock)
    calls: list[str] = []

    @issuer.authorize
    def only_alice(user: User, request: Request) -> bool:
        calls.append(user.id)
        return bool(user.id == "alice")

    token_request_of(client_for(app, "alice").get(TOKEN))
    error_of(client_for(app, "bob").get(TOKEN), 403, 40300)
    assert calls == ["alice", "bob"]


def test_authorize_hook_may_raise_its_own_error(clock: FakeClock) -> None:
    app, issuer = make_app(clock)

    @issuer.authorize
    def suspended(user: User, request: Request) -> bool:
        raise Forbidden("account suspended", code=40310)

    error = error_of(client_for(app).get(TOKEN), 403, 40310)
    assert error["message"] == "account suspended"


# -- the default format: a TokenRequest ------------------------------------------


def test_token_request_body_and_headers(alice: FlaskClient, clock: FakeClock) -> None:
    response = alice.get(TOKEN)
    body = token_request_of(response)
    assert set(body) == TR_KEYS
    assert body["keyName"] == KEY_NAME
    assert body["clientId"] == "alice"
    assert body["timestamp"] == clock.ms
    assert body["ttl"] == 3_600_000
    assert body["capability"] == '{"*":["history","publish","subscribe"]}'
    assert len(body["nonce"]) >= 16
    assert response.headers["Pragma"] == "no-cache"


def test_every_token_request_has_a_fresh_nonce(alice: FlaskClient) -> None:
    nonces = {alice.get(TOKEN).get_json()["nonce"] for _ in range(5)}
    assert len(nonces) == 5


def test_default_ttl_from_config(clock: FakeClock) -> None:
    app, _ = make_app(clock, {"TOKENREQ_TTL": 60_000})
    assert token_request_of(client_for(app).get(TOKEN))["ttl"] == 60_000
    error_of(client_for(app).get(TOKEN, query_string={"ttl": "60001"}), 400, 40003)


# -- how parameters arrive ---------------------------------------------------------


def test_get_query_params(alice: FlaskClient) -> None:
    query = {"capability": '{"chat":["subscribe"]}', "ttl": "60000", "clientId": "alice"}
    body = token_request_of(alice.get(TOKEN, query_string=query))
    assert body["capability"] == '{"chat":["subscribe"]}'
    assert body["ttl"] == 60_000


def test_post_form_body(alice: FlaskClient) -> None:
    form = {"capability": '{"chat":["subscribe"]}', "ttl": "60000", "client_id": "alice"}
    body = token_request_of(alice.post(TOKEN, data=form))
    assert body["capability"] == '{"chat":["subscribe"]}'
    assert body["ttl"] == 60_000
    assert body["clientId"] == "alice"


def test_post_json_body_with_capability_object(alice: FlaskClient) -> None:
    payload = {"capability": {"chat": ["subscribe"]}, "ttl": 60_000, "clientId": "alice"}
    body = token_request_of(alice.post(TOKEN, json=payload))
    assert body["capability"] == '{"chat":["subscribe"]}'
    assert body["ttl"] == 60_000


def test_post_json_nulls_and_empty_strings_count_as_absent(alice: FlaskClient) -> None:
    payload = {"capability": None, "ttl": None, "client_id": None, "clientId": "", "x": 1}
    body = token_request_of(alice.post(TOKEN, json=payload))
    assert body["ttl"] == 3_600_000
    assert body["clientId"] == "alice"


def test_post_without_body(alice: FlaskClient) -> None:
    token_request_of(alice.post(TOKEN))
    token_request_of(alice.post(TOKEN, data=b"", content_type="application/json"))


def test_body_wins_over_query(alice: FlaskClient) -> None:
    response = alice.post(TOKEN, query_string={"ttl": "1000"}, data={"ttl": "2000"})
    assert token_request_of(response)["ttl"] == 2000


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_bad_json_body_is_400(alice: FlaskClient, raw: bytes) -> None:
    error_of(alice.post(TOKEN, data=raw, content_type="application/json"), 400, 40001)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_another_method_is_an_ably_405(alice: FlaskClient, method: str) -> None:
    response = alice.open(TOKEN, method=method)
    error_of(response, 405, 40500)
    assert response.headers["Allow"] == "GET, HEAD, POST, OPTIONS"
    assert response.headers["Cache-Control"] == "no-store"


def test_unknown_format_is_400(alice: FlaskClient) -> None:
    error_of(alice.get(TOKEN, query_string={"format": "xml"}), 400, 40003)


# -- clientId ---------------------------------------------------------------------


@pytest.mark.parametrize("param", ["clientId", "client_id"])
def test_cannot_obtain_another_client_id(alice: FlaskClient, param: str) -> None:
    for other in ("bob", "*", "alice "):
        error_of(alice.get(TOKEN, query_string={param: other}), 403, 40102)


@pytest.mark.parametrize("param", ["clientId", "client_id"])
def test_own_client_id_in_either_spelling(alice: FlaskClient, param: str) -> None:
    body = token_request_of(alice.get(TOKEN, query_string={param: "alice"}))
    assert body["clientId"] == "alice"


def test_client_id_spellings_must_agree(alice: FlaskClient) -> None:
    response = alice.get(TOKEN, query_string={"clientId": "alice", "client_id": "bob"})
    error_of(response, 400, 40000)


def test_wildcard_user_may_choose_any_client_id(app: Flask) -> None:
    carol = client_for(app, "carol")
    assert token_request_of(carol.get(TOKEN))["clientId"] == "*"
    query = {"clientId": "visitor-7"}
    assert token_request_of(carol.get(TOKEN, query_string=query))["clientId"] == "visitor-7"


@pytest.mark.parametrize("fmt", ["tokenrequest", "jwt"])
@pytest.mark.parametrize("wanted", ["a\nb", "a\rb", "a\x00b", "a\ud800"])
def test_a_client_id_no_token_may_carry_is_40012_in_every_format(
    app: Flask, fmt: str, wanted: str
) -> None:
    """Even a user who may choose any clientId gets 400 for one that no signed field
    may hold (a line break, NUL, a lone surrogate), in a JWT as in a TokenRequest."""
    carol = client_for(app, "carol")
    body = json.dumps({"clientId": wanted, "format": fmt})
    error = error_of(carol.post(TOKEN, data=body, content_type="application/json"), 400, 40012)
    assert str(error["message"]).startswith("clientId ")


def test_no_client_id_user_cannot_pick_one(app: Flask) -> None:
    dave = client_for(app, "dave")
    assert "clientId" not in token_request_of(dave.get(TOKEN))
    error_of(dave.get(TOKEN, query_string={"clientId": "dave"}), 403, 40102)


def test_default_client_id_is_the_user_id(clock: FakeClock) -> None:
    app, _ = make_app(clock, hooks=False, config={"TOKENREQ_ISSUER_CAPABILITY": BOB_CAP})
    body = token_request_of(client_for(app, "bob").get(TOKEN))
    assert body["clientId"] == "bob"
    assert Capability.parse(body["capability"]) == Capability(BOB_CAP)


def test_invalid_client_id_from_loader_is_500(clock: FakeClock) -> None:
    app, issuer = make_app(clock)
    issuer.client_id_loader(lambda user: "")
    error_of(client_for(app).get(TOKEN), 500, 50000)


# -- capability ---------------------------------------------------------------------


def test_cannot_widen_capability(app: Flask) -> None:
    bob = client_for(app, "bob")
    for wanted in ('{"*":["publish"]}', '{"[*]*":["presence"]}', '{"chat":["push-admin"]}'):
        error = error_of(bob.get(TOKEN, query_string={"capability": wanted}), 403, 40160)
        assert "capability" in error["message"].lower()


def test_partly_allowed_capability_is_narrowed(app: Flask) -> None:
    bob = client_for(app, "bob")
    wanted = '{"chat":["publish","subscribe"],"[*]*":["*"]}'
    body = token_request_of(bob.get(TOKEN, query_string={"capability": wanted}))
    assert Capability.parse(body["capability"]) == Capability(
        {"chat": ["subscribe"], "*": ["history", "subscribe"]}
    )


def test_narrowing_signs_the_canonical_capability(alice: FlaskClient) -> None:
    wanted = '{"room:b": ["subscribe", "publish"], "room:a": ["history"]}'
    body = token_request_of(alice.get(TOKEN, query_string={"capability": wanted}))
    assert body["capability"] == '{"room:a":["history"],"room:b":["publish","subscribe"]}'
    assert body["capability"] == Capability.parse(wanted).canonical


@pytest.mark.parametrize(
    "wanted",
    ["not json", "[1]", '"text"', "null", '{"chat": "subscribe"}', '{"chat": [1]}', "[" * 5000],
)
def test_malformed_capability_is_400_with_message(alice: FlaskClient, wanted: str) -> None:
    error = error_of(alice.get(TOKEN, query_string={"capability": wanted}), 400, 40000)
    assert "capability" in error["message"]


def test_malformed_capability_in_json_body(alice: FlaskClient) -> None:
    for wanted in ([["chat"]], 7, True, {"chat": None}):
        error_of(alice.post(TOKEN, json={"capability": wanted}), 400, 40000)


def test_user_with_no_capability_is_refused(app: Flask) -> None:
    eve = client_for(app, "eve")
    error_of(eve.get(TOKEN), 403, 40300)
    error_of(eve.get(TOKEN, query_string={"capability": "{"}), 400, 40000)  # params first


def test_oversized_body_is_json_error(clock: FakeClock) -> None:
    app, _ = make_app(clock, {"MAX_CONTENT_LENGTH": 1000})
    response = client_for(app).post(TOKEN, data={"capability": "x" * 5000})
    error_of(response, 413, 41300)
    response = client_for(app).post(TOKEN, json={"capability": "x" * 70_000})
    assert response.status_code in (400, 413)


class _CountingInput:
    """Wraps ``wsgi.input`` and counts the bytes the app reads from it."""

    def __init__(self, stream: Any, counter: list[int]) -> None:
        self._stream = stream
        self._counter = counter

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self._counter[0] += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._counter[0] += len(data)
        return data


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "application/json", "multipart/form-data"]
)
def test_chunked_body_is_read_no_further_than_the_bound(
    clock: FakeClock, content_type: str
) -> None:
    """A 64 MiB chunked body is refused after at most MAX_BODY bytes, whatever the app allows."""
    import requests

    from flask_tokenreq.issuer import MAX_BODY

    from .servers import serve_app

    app, _ = make_app(clock, {"MAX_CONTENT_LENGTH": None, "MAX_FORM_MEMORY_SIZE": None})
    read = [0]
    inner = app.wsgi_app

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == TOKEN:
            environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], read)
        return inner(environ, start_response)

    app.wsgi_app = counting  # type: ignore[method-assign]
    chunk = b"capability=" + b"x" * (64 * 1024 - 11)

    def body() -> Iterator[bytes]:
        for _ in range(1024):  # 64 MiB, sent chunked (no Content-Length)
            yield chunk

    with serve_app(app) as url:
        session = requests.Session()
        session.post(url + "/test-login/alice", timeout=10).raise_for_status()
        try:
            response = session.post(
                url + TOKEN, data=body(), headers={"Content-Type": content_type}, timeout=30
            )
        except requests.ConnectionError:
            response = None  # the server answered and closed while we were still sending
        if response is not None:
            assert response.status_code == 413
            assert response.json()["error"]["code"] == 41300
    assert read[0] <= MAX_BODY + len(chunk) + 64


def test_ttl_below_the_minimum_names_milliseconds(clock: FakeClock) -> None:
    app, _ = make_app(clock, {"TOKENREQ_MIN_TTL": 10_000})
    alice = client_for(app)
    error = error_of(alice.get(TOKEN, query_string={"ttl": "60"}), 400, 40003)
    assert "ttl 60 ms is shorter than the minimum 10000 ms" in error["message"]
    assert "60 seconds is ttl=60000" in error["message"]
    token_request_of(alice.get(TOKEN, query_string={"ttl": "60000"}))
    # 5000 s would be above the issuer's TOKENREQ_TTL (3600 s): no such hint.
    error = error_of(alice.get(TOKEN, query_string={"ttl": "5000"}), 400, 40003)
    assert error["message"] == "ttl 5000 ms is shorter than the minimum 10000 ms"


def test_ttl_setting_below_the_minimum_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        make_app(config={"TOKENREQ_TTL": 3600, "TOKENREQ_MIN_TTL": 10_000})
    assert "TOKENREQ_TTL" in str(info.value)
    assert "3600 s is 3600000" in str(info.value)


def test_empty_allowed_capability_is_40160(clock: FakeClock) -> None:
    app, issuer = make_app(clock)
    issuer.capability_loader(lambda user, request: {})
    error_of(client_for(app).get(TOKEN), 403, 40160)


def test_invalid_capability_from_loader_is_500(clock: FakeClock) -> None:
    app, issuer = make_app(clock)
    issuer.capability_loader(lambda user, request: {"chat": "publish"})
    error = error_of(client_for(app).get(TOKEN), 500, 50000)
    assert "capability_loader" in error["message"]


def test_capability_from_config_without_loader(clock: FakeClock) -> None:
    config = {"TOKENREQ_ISSUER_CAPABILITY": '{"news":["subscribe"]}'}
    app, _ = make_app(clock, config, hooks=False)
    body = token_request_of(client_for(app).get(TOKEN))
    assert body["capability"] == '{"news":["subscribe"]}'


def test_no_capability_source_is_500_naming_both(clock: FakeClock) -> None:
    app, _ = make_app(clock, hooks=False)
    error = error_of(client_for(app).get(TOKEN), 500, 50000)
    assert "capability_loader" in error["message"]
    assert "TOKENREQ_ISSUER_CAPABILITY" in error["message"]


# -- ttl ----------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["1", "60000", "3600000"])
def test_ttl_narrows(alice: FlaskClient, ttl: str) -> None:
    assert token_request_of(alice.get(TOKEN, query_string={"ttl": ttl}))["ttl"] == int(ttl)


def test_cannot_widen_ttl(alice: FlaskClient) -> None:
    error = error_of(alice.get(TOKEN, query_string={"ttl": "3600001"}), 400, 40003)
    assert "ttl" in error["message"]
    error_of(alice.post(TOKEN, json={"ttl": 86_400_000}), 400, 40003)


@pytest.mark.parametrize(
    "ttl", ["abc", "1.5", "-5", "0", "1e3", " 60000", "60000 ", "0x10", "６０", "+5", "9" * 40]
)
def test_non_integer_ttl_is_400(alice: FlaskClient, ttl: str) -> None:
    error = error_of(alice.get(TOKEN, query_string={"ttl": ttl}), 400, 40003)
    assert "ttl" in error["message"]


@pytest.mark.parametrize("ttl", [True, 1.5, 60000.0, -1, 0, "x", [60000], {"ms": 1}])
def test_bad_json_ttl_is_400(alice: FlaskClient, ttl: Any) -> None:
    error_of(alice.post(TOKEN, json={"ttl": ttl}), 400, 40003)


# -- projectId ------------------------------------------------------------------------


def test_project_scopes_the_capability(app: Flask) -> None:
    body = token_request_of(client_for(app, "alice").get(TOKEN, query_string={"projectId": "p1"}))
    assert body["capability"] == '{"p1:*":["history","publish","subscribe"]}'
    body = token_request_of(client_for(app, "bob").post(TOKEN, json={"projectId": "p1"}))
    assert body["capability"] == '{"p1:*":["history","subscribe"]}'


def test_project_and_requested_capability_both_narrow(alice: FlaskClient) -> None:
    query = {"projectId": "p1", "capability": '{"p1:room":["publish"],"other":["publish"]}'}
    body = token_request_of(alice.get(TOKEN, query_string=query))
    assert body["capability"] == '{"p1:room":["publish"]}'
    query = {"projectId": "p1", "capability": '{"p2:room":["publish"]}'}
    error_of(alice.get(TOKEN, query_string=query), 403, 40160)


def test_project_the_user_may_not_use_is_403(app: Flask) -> None:
    bob = client_for(app, "bob")
    error_of(bob.get(TOKEN, query_string={"projectId": "p2"}), 403, 40300)
    error_of(bob.get(TOKEN, query_string={"projectId": "nope"}), 403, 40300)
    error_of(bob.post(TOKEN, json={"projectId": ["p1"]}), 400, 40000)


def test_project_without_project_loader_is_400(clock: FakeClock) -> None:
    app, _ = make_app(clock, {"TOKENREQ_ISSUER_CAPABILITY": ALICE_CAP}, hooks=False)
    error = error_of(client_for(app).get(TOKEN, query_string={"projectId": "p1"}), 400, 40000)
    assert "projectId" in error["message"]


# -- format=jwt -------------------------------------------------------------------------


def test_jwt_format(tokenreq_clock: ManualClock) -> None:
    clock = tokenreq_clock  # from the wall-clock time, so pyjwt's own exp check applies
    app, _ = make_app()  # the issuer reads the process clock: the fixture's
    query = {"format": "jwt", "ttl": "120000", "capability": '{"chat":["publish","subscribe"]}'}
    response = client_for(app, "alice").get(TOKEN, query_string=query)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/jwt"
    assert response.headers["Cache-Control"] == "no-store"
    token = response.get_data(as_text=True)
    header = jwt.get_unverified_header(token)
    assert header["kid"] == KEY_NAME
    assert header["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["iat", "exp"]})
    assert claims == {
        "iat": clock() // 1000,
        "exp": clock() // 1000 + 120,
        "x-ably-capability": '{"chat":["publish","subscribe"]}',
        "x-ably-clientId": "alice",
    }


def test_jwt_without_client_id(clock: FakeClock) -> None:
    app, _ = make_app(clock)
    response = client_for(app, "dave").get(TOKEN, query_string={"format": "jwt"})
    claims = jwt.decode(
        response.get_data(as_text=True),
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False},
    )
    assert "x-ably-clientId" not in claims
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["x-ably-capability"] == '{"news":["subscribe"]}'


def test_jwt_errors_are_json(alice: FlaskClient) -> None:
    error_of(alice.get(TOKEN, query_string={"format": "jwt", "ttl": "x"}), 400, 40003)


# -- format=token -------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_format_token_without_provider_url_is_400(alice: FlaskClient) -> None:
    error = error_of(alice.get(TOKEN, query_string={"format": "token"}), 400, 40003)
    assert "TOKENREQ_PROVIDER_URL" in error["message"]


def test_format_token_provider_unreachable_is_503(clock: FakeClock) -> None:
    config = {"TOKENREQ_PROVIDER_URL": f"http://127.0.0.1:{_closed_port()}"}
    app, _ = make_app(clock, config)
    response = client_for(app).get(TOKEN, query_string={"format": "token"})
    error_of(response, 503, 50003)


@pytest.fixture
def provider_url() -> Iterator[str]:
    """Our real provider (flask_tokenreq.provider) served on loopback."""
    try:
        from flask_tokenreq.provider import TokenProvider
    except Exception as exc:
        unavailable(f"flask_tokenreq.provider.TokenProvider cannot be imported: {exc!r}")
    papp = Flask("provider_for_issuer_tests")
    papp.config.update(
        TESTING=True,
        TOKENREQ_PROVIDER_KEYS=[KEY],
        TOKENREQ_SIGNING_SECRET="provider-signing-secret-0123456789abcdef",
        TOKENREQ_NONCE_STORE="memory://",
    )
    provider = TokenProvider(papp)
    if provider.blueprint.name not in papp.blueprints:
        papp.register_blueprint(provider.blueprint)
    rules = [r.rule for r in papp.url_map.iter_rules() if r.rule.endswith("/requestToken")]
    assert rules, "the provider has no requestToken endpoint"
    prefix = rules[0].split("/keys/")[0]
    server = make_server("127.0.0.1", 0, papp, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{prefix}"
    finally:
        server.shutdown()
        thread.join()


def test_format_token_against_the_provider(provider_url: str) -> None:
    app, _ = make_app(config={"TOKENREQ_PROVIDER_URL": provider_url})  # real clock
    query = {"format": "token", "capability": '{"chat":["subscribe","publish"]}'}
    response = client_for(app, "bob").get(TOKEN, query_string=query)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    details = response.get_json()
    assert isinstance(details["token"], str)
    assert details["keyName"] == KEY_NAME
    assert details["clientId"] == "bob"
    assert Capability.parse(details["capability"]) == Capability({"chat": ["subscribe"]})
    assert details["expires"] > details["issued"]


def test_format_token_passes_provider_errors_on(provider_url: str) -> None:
    config = {"TOKENREQ_PROVIDER_URL": provider_url, "TOKENREQ_KEY": f"{KEY_NAME}:{OTHER_SECRET}"}
    app, _ = make_app(config=config)
    response = client_for(app).get(TOKEN, query_string={"format": "token"})
    error = error_of(response, 401, 40101)
    assert OTHER_SECRET not in response.get_data(as_text=True)
    assert OTHER_SECRET not in error["message"]


# -- CORS -------------------------------------------------------------------------------


@pytest.fixture
def cors_app(clock: FakeClock) -> Flask:
    return make_app(clock, {"TOKENREQ_CORS_ORIGINS": ["https://app.example"]})[0]


def test_cors_allowed_origin(cors_app: Flask) -> None:
    response = client_for(cors_app).get(TOKEN, headers={"Origin": "https://app.example"})
    token_request_of(response)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in response.headers["Vary"]


def test_cors_other_origin_gets_no_cors_headers(cors_app: Flask) -> None:
    response = client_for(cors_app).get(TOKEN, headers={"Origin": "https://evil.example"})
    token_request_of(response)
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_cors_on_errors_too(cors_app: Flask) -> None:
    response = client_for(cors_app, None).get(TOKEN, headers={"Origin": "https://app.example"})
    error_of(response, 401, 40100)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_cors_preflight(cors_app: Flask) -> None:
    client = client_for(cors_app, None)
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization",
    }
    response = client.options(TOKEN, headers=headers)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    assert response.headers["Cache-Control"] == "no-store"
    response = client.options(TOKEN, headers={**headers, "Origin": "https://evil.example"})
    assert response.status_code == 204
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


def test_no_cors_by_default(alice: FlaskClient) -> None:
    response = alice.get(TOKEN, headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert alice.options(TOKEN).status_code == 204


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "hint"),
    [
        ("TOKENREQ_KEY", f"{KEY_NAME}{SECRET}", "':'"),
        ("TOKENREQ_KEY", f"appidkeyid:{SECRET}", "'.'"),
        ("TOKENREQ_KEY", f"{KEY_NAME}:", "':'"),
        ("TOKENREQ_KEY", 12, "key"),
        ("TOKENREQ_TTL", "an hour", "integer"),
        ("TOKENREQ_TTL", 1.5, "integer"),
        ("TOKENREQ_TTL", 0, "at least"),
        ("TOKENREQ_TTL", 86_400_001, "24 hours"),
        ("TOKENREQ_CORS_ORIGINS", "https://app.example", "list"),
        ("TOKENREQ_CORS_ORIGINS", ["*"], "origins"),
        ("TOKENREQ_CORS_ORIGINS", ["https://app.example/path"], "origins"),
        ("TOKENREQ_ISSUER_CAPABILITY", '{"chat":"publish"}', "capability"),
        ("TOKENREQ_PROVIDER_URL", "ftp://provider.example", "http"),
        ("TOKENREQ_PROVIDER_TIMEOUT", "soon", "seconds"),
        ("TOKENREQ_ISSUER_URL_PREFIX", "tokens", "'/'"),
    ],
)
def test_config_errors_at_init_app_name_the_setting(setting: str, value: Any, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(config={setting: value})
    message = str(info.value)
    assert setting in message
    assert hint in message
    assert SECRET not in message


def test_malformed_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("env_key")
    monkeypatch.setenv("TOKENREQ_KEY", f"appidkeyid:{SECRET}")
    with pytest.raises(ConfigError, match="TOKENREQ_KEY"):
        TokenIssuer(app)


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setenv("TOKENREQ_KEY", KEY)
    app, _ = make_app(clock, {"TOKENREQ_KEY": None})
    assert token_request_of(client_for(app).get(TOKEN))["keyName"] == KEY_NAME


@pytest.mark.parametrize("user", ["alice", None])
def test_missing_key_is_500_naming_the_setting(clock: FakeClock, user: str | None) -> None:
    app, _ = make_app(clock, {"TOKENREQ_KEY": None})  # init_app does not raise
    error = error_of(client_for(app, user).get(TOKEN), 500, 50000)
    assert "TOKENREQ_KEY" in error["message"]


def test_key_set_after_init_app_is_used(clock: FakeClock) -> None:
    app, _ = make_app(clock, {"TOKENREQ_KEY": None})
    app.config["TOKENREQ_KEY"] = KEY
    assert token_request_of(client_for(app).get(TOKEN))["keyName"] == KEY_NAME
    app.config["TOKENREQ_KEY"] = f"appidkeyid:{SECRET}"
    error = error_of(client_for(app).get(TOKEN), 500, 50000)
    assert "TOKENREQ_KEY" in error["message"]


def test_settings_repr_hides_the_key(app: Flask) -> None:
    issuer = app.extensions["tokenreq_issuer"]
    assert isinstance(issuer, TokenIssuer)
    assert SECRET not in repr(issuer.settings(app))
    logging.getLogger("test").debug("settings: %r", issuer.settings(app))


# -- registration -------------------------------------------------------------------------


def test_registration_defaults(app: Flask) -> None:
    assert isinstance(app.extensions["tokenreq_issuer"], TokenIssuer)
    rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint == "tokenreq_issuer.token"}
    assert rules == {"/tokenreq/token"}


def test_url_prefix_from_argument_and_config(clock: FakeClock) -> None:
    app, _ = make_app(clock, {"TOKENREQ_ISSUER_URL_PREFIX": "/cfg"}, url_prefix="/api/tokens")
    token_request_of(client_for(app).get("/api/tokens/token"))
    app, _ = make_app(clock, {"TOKENREQ_ISSUER_URL_PREFIX": "/cfg/"})
    token_request_of(client_for(app).get("/cfg/token"))


def test_register_blueprint_yourself(clock: FakeClock) -> None:
    app, issuer = make_app(clock, register_blueprint=False)
    assert "tokenreq_issuer" not in app.blueprints
    app.register_blueprint(issuer.blueprint, url_prefix="/mine")
    token_request_of(client_for(app).get("/mine/token"))


def test_init_app_arguments_override_the_constructor(clock: FakeClock) -> None:
    app = base_app({"TOKENREQ_ISSUER_CAPABILITY": ALICE_CAP})
    issuer = TokenIssuer(url_prefix="/ctor", register_blueprint=False, now_ms=clock)
    issuer.init_app(app, register_blueprint=True, url_prefix="/init")
    token_request_of(client_for(app).get("/init/token"))


def test_init_app_twice_is_an_error(app: Flask) -> None:
    with pytest.raises(RuntimeError):
        app.extensions["tokenreq_issuer"].init_app(app)


def test_one_issuer_several_apps(clock: FakeClock) -> None:
    issuer = TokenIssuer(now_ms=clock)
    issuer.capability_loader(lambda user, request: ALICE_CAP)
    apps = []
    for ttl in (1000, 2000):
        app = base_app({"TOKENREQ_TTL": ttl})
        issuer.init_app(app)
        apps.append(app)
    assert [token_request_of(client_for(a).get(TOKEN))["ttl"] for a in apps] == [1000, 2000]


def test_blueprint_without_init_app_is_500(clock: FakeClock) -> None:
    app, _ = make_app(clock, register_blueprint=False)
    stray = TokenIssuer()
    app.register_blueprint(stray.blueprint, url_prefix="/stray")
    error = error_of(client_for(app).get("/stray/token"), 500, 50000)
    assert "init_app" in error["message"]


def test_without_flask_login_is_500(clock: FakeClock) -> None:
    app = Flask("no_login")
    app.config.update(TESTING=True, TOKENREQ_KEY=KEY)
    TokenIssuer(app, now_ms=clock)
    error = error_of(app.test_client().get(TOKEN), 500, 50000)
    assert "flask-login" in error["message"]


def test_unexpected_hook_error_is_500_json(clock: FakeClock) -> None:
    app, issuer = make_app(clock)

    @issuer.capability_loader
    def broken(user: User, request: Request) -> Any:
        raise RuntimeError("database down")

    error = error_of(client_for(app).get(TOKEN), 500, 50000)
    assert "database" not in error["message"]


def test_token_req_error_from_loader_passes_on(clock: FakeClock) -> None:
    app, issuer = make_app(clock)

    @issuer.project_loader
    def project(user: User, project_id: str) -> Any:
        raise TokenReqError("project store unavailable", code=50003, status=503)

    error_of(client_for(app).get(TOKEN, query_string={"projectId": "p1"}), 503, 50003)


# -- the example app ----------------------------------------------------------------------


@pytest.fixture
def example_app(monkeypatch: pytest.MonkeyPatch) -> Flask:
    from examples.issuer_app import create_app

    monkeypatch.setenv("TOKENREQ_KEY", KEY)
    monkeypatch.setenv("TOKENREQ_TTL", "600000")
    app = create_app({"TESTING": True})
    app.test_client_class = SecretCheckingClient
    return app


@pytest.mark.parametrize(
    ("user", "ops"),
    [("alice", ["history", "publish", "subscribe"]), ("bob", ["history", "subscribe"])],
)
def test_example_app_login_then_token(example_app: Flask, user: str, ops: list[str]) -> None:
    client = example_app.test_client()
    error_of(client.get("/api/tokenreq/token"), 401, 40100)
    response = client.post("/login", data={"username": user, "password": f"{user}-password"})
    assert response.status_code == 200
    assert response.get_json() == {"user": user}
    body = token_request_of(client.get("/api/tokenreq/token"))
    assert body["clientId"] == user
    assert body["ttl"] == 600_000
    assert json.loads(body["capability"]) == {"*": ops}
    if user == "bob":
        query = {"capability": '{"chat":["publish"]}'}
        error_of(client.get("/api/tokenreq/token", query_string=query), 403, 40160)
    assert client.post("/logout").status_code == 200
    error_of(client.get("/api/tokenreq/token"), 401, 40100)


def test_example_app_wrong_password(example_app: Flask) -> None:
    client = example_app.test_client()
    for username, password in [("alice", "bob-password"), ("mallory", "x"), ("", "")]:
        response = client.post("/login", data={"username": username, "password": password})
        error_of(response, 401, 40100)
    error_of(client.get("/api/tokenreq/token"), 401, 40100)


def test_example_app_development_defaults(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from examples.issuer_app import create_app

    app = create_app()
    assert app.config["SECRET_KEY"] == create_app().config["SECRET_KEY"]
    assert "FLASK_SECRET_KEY" in caplog.text
    assert "TOKENREQ_KEY" in caplog.text
    client = app.test_client()
    client.post("/login", data={"username": "alice", "password": "alice-password"})
    assert client.get("/api/tokenreq/token").get_json()["clientId"] == "alice"


def test_example_app_reads_flask_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.issuer_app import create_app

    monkeypatch.setenv("FLASK_SECRET_KEY", "from-the-environment-0123456789abcdef")
    monkeypatch.setenv("TOKENREQ_CORS_ORIGINS", '["https://app.example"]')
    app = create_app()
    assert app.config["SECRET_KEY"] == "from-the-environment-0123456789abcdef"
    assert app.config["TOKENREQ_CORS_ORIGINS"] == ["https://app.example"]
