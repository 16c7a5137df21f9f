"""flask_tokenreq.client against a real provider served on loopback.

One Flask app holds the provider (with an injected clock and an in-memory
nonce store), a guarded route, and several authUrl endpoints answering in
each form ably-js accepts. Requests are counted at the server side.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests
from flask import Flask, Response, g, jsonify, request

from flask_tokenreq import sign_token_request
from flask_tokenreq.client import (
    AuthUrlError,
    ProviderUnreachable,
    TokenClient,
    bearer,
    exchange,
    jwt_times,
    request_token,
)
from flask_tokenreq.errors import (
    CapabilityNotPermitted,
    InvalidCredentials,
    NonceReplayed,
    TimestampNotCurrent,
    TokenReqError,
    Unauthorized,
)
from flask_tokenreq.http import json_response
from flask_tokenreq.provider import TokenProvider
from flask_tokenreq.stores import MemoryNonceStore

from .conftest import KEY, KEY_NAME, SECRET, FakeClock
from .servers import HitCounter, serve_app

SIGNING_SECRET = "client-test-signing-secret-0123456789abcdef"
EXCHANGE_PATH = f"/keys/{KEY_NAME}/requestToken"
COOKIE = "session-cookie-value-for-the-authurl"


@dataclass
class Provider:
    url: str
    clock: FakeClock
    hits: HitCounter
    app: Flask


def make_app(clock: FakeClock) -> tuple[Flask, HitCounter]:
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=[KEY],
        TOKENREQ_LEEWAY=0,
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    hits = HitCounter(app)

    def signed() -> dict[str, Any]:
        ttl = request.values.get("ttl", type=int)
        return sign_token_request(KEY, ttl=ttl, client_id="alice", timestamp=clock()).to_dict()

    @app.get("/protected/<name>")
    @provider.require("subscribe", "{name}")
    def protected(name: str) -> Response:
        return json_response({"channel": name, "clientId": g.tokenreq.client_id})

    @app.get("/always-expired")
    def always_expired() -> Response:
        raise TokenReqError("Token expired", code=40142, status=401)

    @app.route("/auth/tokenrequest", methods=["GET", "POST"])
    def auth_tokenrequest() -> Response:
        return json_response(signed())

    @app.get("/auth/details")
    def auth_details() -> Response:
        return json_response(provider.exchange(signed()).token_details())

    @app.get("/auth/jwt")
    def auth_jwt() -> Response:
        iat = clock() // 1000
        token = jwt.encode(
            {
                "iat": iat,
                "exp": iat + 60,
                "x-ably-capability": '{"*":["*"]}',
                "x-ably-clientId": "alice",
            },
            SECRET,
            algorithm="HS256",
            headers={"kid": KEY_NAME},
        )
        return Response(token, mimetype="application/jwt")

    @app.get("/auth/text")
    def auth_text() -> Response:
        token = provider.exchange(signed()).token
        return Response(token + "\n", mimetype="text/plain")

    @app.get("/auth/opaque")
    def auth_opaque() -> Response:
        return Response("an-opaque-token-string", mimetype="text/plain")

    @app.get("/auth/html")
    def auth_html() -> Response:
        return Response("<p>hello</p>", mimetype="text/html")

    @app.get("/auth/json-as-text")
    def auth_json_as_text() -> Response:
        return Response('{"keyName": "x"}', mimetype="text/plain")

    @app.get("/auth/list")
    def auth_list() -> Response:
        return jsonify([1, 2])

    @app.get("/auth/login-required")
    def auth_login_required() -> Response:
        if request.cookies.get("session") != COOKIE:
            raise Unauthorized("log in first")
        return json_response(signed())

    @app.post("/login")
    def login() -> Response:
        response = json_response({"ok": True})
        response.set_cookie("session", COOKIE, httponly=True)
        return response

    return app, hits


@pytest.fixture
def provider(clock: FakeClock) -> Iterator[Provider]:
    app, hits = make_app(clock)
    with serve_app(app) as url:
        yield Provider(url, clock, hits, app)


def assert_no_secret(exc: BaseException) -> None:
    for text in (str(exc), repr(exc)):
        assert SECRET not in text
        assert SIGNING_SECRET not in text


# -- exchange / request_token ---------------------------------------------------------


def test_exchange_returns_token_details(provider: Provider) -> None:
    treq = sign_token_request(KEY, client_id="alice", timestamp=provider.clock())
    details = exchange(treq, provider.url)
    assert details["keyName"] == KEY_NAME
    assert details["clientId"] == "alice"
    assert details["issued"] == provider.clock()
    assert details["expires"] == provider.clock() + 3_600_000
    response = requests.get(
        provider.url + "/protected/room", headers={"Authorization": bearer(details["token"])}
    )
    assert response.status_code == 200
    assert response.json() == {"channel": "room", "clientId": "alice"}


def test_exchange_accepts_ably_python_dict_with_nulls(provider: Provider) -> None:
    treq = sign_token_request(KEY, timestamp=provider.clock())
    wire = {**treq.to_dict(), "clientId": None, "ttl": None, "capability": None}
    assert exchange(wire, provider.url + "/")["keyName"] == KEY_NAME


def test_exchange_bad_mac_is_40101(provider: Provider) -> None:
    treq = sign_token_request("appid.keyid:not-the-right-secret-0123456789abcdef")
    with pytest.raises(InvalidCredentials) as info:
        exchange(treq, provider.url)
    assert info.value.code == 40101
    assert info.value.status == 401
    assert "MAC" in info.value.message
    assert_no_secret(info.value)


def test_exchange_replay_is_40105(provider: Provider) -> None:
    treq = sign_token_request(KEY, timestamp=provider.clock())
    exchange(treq, provider.url)
    with pytest.raises(NonceReplayed) as info:
        exchange(treq, provider.url)
    assert (info.value.code, info.value.status) == (40105, 401)
    assert "replayed" in info.value.message.lower()


def test_exchange_old_timestamp_is_40104(provider: Provider) -> None:
    treq = sign_token_request(KEY, timestamp=provider.clock() - 10 * 60_000)
    with pytest.raises(TimestampNotCurrent):
        exchange(treq, provider.url)


def test_exchange_unknown_code_falls_back_to_base_class() -> None:
    app = Flask(__name__)

    @app.post("/odd/keys/<name>/requestToken")
    def odd(name: str) -> Response:
        raise TokenReqError("I'm a teapot", code=41800, status=418)

    @app.post("/plain/keys/<name>/requestToken")
    def plain(name: str) -> Response:
        return Response("bad gateway", status=502, mimetype="text/plain")

    @app.post("/empty/keys/<name>/requestToken")
    def empty(name: str) -> Response:
        return Response("{}", status=200, mimetype="application/json")

    @app.post("/superscript/keys/<name>/requestToken")
    def superscript(name: str) -> Response:
        # "²".isdigit() is true, but int("²") fails: not a code.
        return Response("oops", status=500, headers={"X-Ably-ErrorCode": "\u00b2"})

    treq = sign_token_request(KEY)
    with serve_app(app) as url:
        with pytest.raises(TokenReqError) as info:
            exchange(treq, url + "/odd")
        assert type(info.value) is TokenReqError
        assert (info.value.code, info.value.status, info.value.message) == (
            41800,
            418,
            "I'm a teapot",
        )
        with pytest.raises(TokenReqError) as info:
            exchange(treq, url + "/plain")
        assert (info.value.code, info.value.status) == (50200, 502)
        with pytest.raises(TokenReqError, match="TokenDetails") as info:
            exchange(treq, url + "/empty")
        assert info.value.status == 502
        with pytest.raises(TokenReqError) as info:
            exchange(treq, url + "/superscript")
        assert (info.value.code, info.value.status) == (50000, 500)


def test_exchange_unreachable_is_50003() -> None:
    with serve_app(Flask(__name__)) as url:
        pass  # the server is gone: nothing listens on this port now
    treq = sign_token_request(KEY)
    with pytest.raises(ProviderUnreachable) as info:
        exchange(treq, url.replace("http://", "http://user:pw@") + "/x?q=1", timeout=2)
    err = info.value
    assert (err.code, err.status) == (50003, 503)
    assert err.__cause__ is None
    assert err.__suppress_context__
    assert "pw" not in err.message
    assert "q=1" not in err.message
    assert_no_secret(err)


def test_exchange_quotes_key_name() -> None:
    app = Flask(__name__)
    seen: list[str] = []

    @app.post("/keys/<path:name>/requestToken")
    def record(name: str) -> Response:
        seen.append(request.environ["REQUEST_URI"])
        return json_response({"token": "t", "issued": 1, "expires": 2})

    treq = sign_token_request("app id.k/ey:secret-0123456789abcdef0123456789abcdef")
    with serve_app(app) as url:
        assert exchange(treq, url)["token"] == "t"
    assert seen == ["/keys/app%20id.k%2Fey/requestToken"]


def test_request_token_signs_locally(provider: Provider) -> None:
    details = request_token(
        KEY,
        provider.url,
        ttl=120_000,
        capability={"room": ["subscribe", "publish"]},
        client_id="bob",
        timestamp=provider.clock(),
    )
    assert details["clientId"] == "bob"
    assert details["capability"] == '{"room":["publish","subscribe"]}'
    assert details["expires"] - details["issued"] == 120_000
    request_token(KEY, provider.url, nonce="n" * 16, timestamp=provider.clock())
    with pytest.raises(NonceReplayed):
        request_token(KEY, provider.url, nonce="n" * 16, timestamp=provider.clock())


def test_request_token_capability_refused_is_40160(provider: Provider) -> None:
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=[{"key": KEY, "capability": {"room": ["history"]}}],
    )
    TokenProvider(app, nonces=MemoryNonceStore(warn=False))
    with serve_app(app) as url, pytest.raises(CapabilityNotPermitted) as info:
        request_token(KEY, url, capability={"other": ["publish"]})
    assert info.value.code == 40160


# -- TokenClient: the authUrl forms ---------------------------------------------------


def test_client_with_token_request(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/tokenrequest", provider.url, now_ms=provider.clock)
    details = client.token_details()
    assert details["clientId"] == "alice"
    assert client.token() == details["token"]
    assert provider.hits["/auth/tokenrequest"] == 1
    assert provider.hits[EXCHANGE_PATH] == 1


def test_client_with_token_details(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/details", now_ms=provider.clock)
    details = client.token_details()
    assert details["issued"] == provider.clock()
    assert provider.hits[EXCHANGE_PATH] == 0
    response = requests.get(provider.url + "/protected/a", auth=client.auth)
    assert response.json()["clientId"] == "alice"


def test_client_with_jwt(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/jwt", now_ms=provider.clock)
    details = client.token_details()
    assert details["expires"] == (provider.clock() // 1000 + 60) * 1000
    response = requests.get(provider.url + "/protected/a", auth=client.auth)
    assert response.status_code == 200, response.text
    assert response.json()["clientId"] == "alice"


def test_client_with_plain_text_jwt(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/text", now_ms=provider.clock)
    details = client.token_details()
    assert not details["token"].endswith("\n")
    assert details["expires"] == provider.clock() + 3_600_000
    assert requests.get(provider.url + "/protected/a", auth=client.auth).status_code == 200


def test_client_with_opaque_token_has_unknown_expiry(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/opaque", now_ms=provider.clock)
    assert client.token_details() == {
        "token": "an-opaque-token-string",
        "issued": None,
        "expires": None,
    }
    provider.clock.advance(365 * 86_400_000)
    client.token()
    assert provider.hits["/auth/opaque"] == 1


@pytest.mark.parametrize(
    ("path", "provider_url", "match"),
    [
        ("/auth/html", True, "Content-Type 'text/html'"),
        ("/auth/json-as-text", True, "text/plain"),
        ("/auth/list", True, "neither"),
        ("/auth/tokenrequest", False, "provider_url"),
    ],
)
def test_client_refuses_other_answers_with_40170(
    provider: Provider, path: str, provider_url: bool, match: str
) -> None:
    client = TokenClient(provider.url + path, provider.url if provider_url else None)
    with pytest.raises(AuthUrlError, match=match) as info:
        client.token()
    assert (info.value.code, info.value.status) == (40170, 401)


def test_client_surfaces_auth_url_error(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/login-required", provider.url)
    with pytest.raises(Unauthorized) as info:
        client.token()
    assert (info.value.code, info.value.message) == (40100, "log in first")


def test_client_reuses_session_cookies(provider: Provider) -> None:
    session = requests.Session()
    session.post(provider.url + "/login").raise_for_status()
    client = TokenClient(
        provider.url + "/auth/login-required", provider.url, session, now_ms=provider.clock
    )
    assert client.token_details()["clientId"] == "alice"


def test_client_auth_params_get_and_post(provider: Provider) -> None:
    for method in ("GET", "POST"):
        client = TokenClient(
            provider.url + "/auth/tokenrequest",
            provider.url,
            auth_params={"ttl": "90000"},
            auth_method=method,
            now_ms=provider.clock,
        )
        details = client.token_details()
        assert details["expires"] - details["issued"] == 90_000


def test_client_unreachable_auth_url() -> None:
    with serve_app(Flask(__name__)) as url:
        pass
    with pytest.raises(ProviderUnreachable):
        TokenClient(url + "/auth", timeout=2).token()


# -- TokenClient: caching, refresh, concurrency ---------------------------------------


def test_client_caches_until_margin_before_expiry(provider: Provider) -> None:
    client = TokenClient(
        provider.url + "/auth/tokenrequest",
        provider.url,
        auth_params={"ttl": "60000"},
        margin_ms=15_000,
        now_ms=provider.clock,
    )
    first = client.token()
    assert client.token() == first
    provider.clock.advance(60_000 - 15_000 - 1)
    assert client.token() == first
    assert provider.hits["/auth/tokenrequest"] == 1
    provider.clock.advance(1)
    second = client.token()
    assert second != first
    assert provider.hits["/auth/tokenrequest"] == 2
    assert provider.hits[EXCHANGE_PATH] == 2


def test_client_margin_is_at_most_half_the_lifetime(provider: Provider) -> None:
    client = TokenClient(
        provider.url + "/auth/tokenrequest",
        provider.url,
        auth_params={"ttl": "10000"},
        margin_ms=15_000,
        now_ms=provider.clock,
    )
    first = client.token()
    assert client.token() == first  # not refreshed on every call
    provider.clock.advance(5_000)
    assert client.token() != first


def test_client_invalidate(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/tokenrequest", provider.url, now_ms=provider.clock)
    first = client.token()
    client.invalidate("some-other-token")
    assert client.token() == first
    client.invalidate()
    assert client.token() != first
    assert provider.hits["/auth/tokenrequest"] == 2


def test_one_refresh_for_16_concurrent_callers(clock: FakeClock) -> None:
    app, hits = make_app(clock)
    entered, release = threading.Event(), threading.Event()

    @app.get("/auth/gated")
    def gated() -> Response:
        entered.set()
        release.wait(timeout=10)
        return json_response(
            sign_token_request(KEY, client_id="alice", timestamp=clock()).to_dict()
        )

    with serve_app(app) as url:
        client = TokenClient(url + "/auth/gated", url, now_ms=clock)
        barrier = threading.Barrier(16)
        results: list[str] = []
        errors: list[BaseException] = []

        def call() -> None:
            barrier.wait(timeout=10)
            try:
                results.append(client.token())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(16)]
        for t in threads:
            t.start()
        assert entered.wait(timeout=10)
        # Readiness poll (bounded): let the other 15 reach the wait before the
        # refresh completes. Even if one is late it finds the cache, so the
        # assertion below holds either way.
        deadline = time.monotonic() + 5
        while len(client._cond._waiters) < 15 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)
        release.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors
    assert len(results) == 16
    assert len(set(results)) == 1
    assert hits["/auth/gated"] == 1
    assert hits[EXCHANGE_PATH] == 1


def test_waiters_share_a_failed_refresh(clock: FakeClock) -> None:
    app, hits = make_app(clock)
    entered, release = threading.Event(), threading.Event()

    @app.get("/auth/gated-fail")
    def gated_fail() -> Response:
        entered.set()
        release.wait(timeout=10)
        raise Unauthorized("session expired")

    with serve_app(app) as url:
        client = TokenClient(url + "/auth/gated-fail", url, now_ms=clock)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.token()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(4)]
        threads[0].start()
        assert entered.wait(timeout=10)
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 5
        while len(client._cond._waiters) < 3 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.001)
        release.set()
        for t in threads:
            t.join(timeout=10)
    assert len(errors) == 4
    assert all(isinstance(e, Unauthorized) and e.message == "session expired" for e in errors)
    assert hits["/auth/gated-fail"] == 1


# -- client.auth ------------------------------------------------------------------------


def test_auth_sends_base64_bearer(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/tokenrequest", provider.url, now_ms=provider.clock)
    response = requests.get(provider.url + "/protected/room", auth=client.auth)
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == bearer(client.token())
    assert response.json()["clientId"] == "alice"


def test_auth_renews_once_on_40142(provider: Provider) -> None:
    client_clock = FakeClock(provider.clock())  # the client believes the token is fresh
    client = TokenClient(
        provider.url + "/auth/tokenrequest",
        provider.url,
        auth_params={"ttl": "60000"},
        now_ms=client_clock,
    )
    session = requests.Session()
    first = client.token()
    provider.clock.advance(60_001)  # expired on the provider's clock
    response = session.get(provider.url + "/protected/room", auth=client.auth)
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [401]
    assert response.history[0].headers["X-Ably-ErrorCode"] == "40142"
    assert client.token() != first
    assert provider.hits["/protected/room"] == 2
    assert provider.hits["/auth/tokenrequest"] == 2


def test_auth_retries_only_once(provider: Provider) -> None:
    client = TokenClient(provider.url + "/auth/tokenrequest", provider.url, now_ms=provider.clock)
    response = requests.get(provider.url + "/always-expired", auth=client.auth)
    assert response.status_code == 401
    assert len(response.history) == 1
    assert provider.hits["/always-expired"] == 2
    assert provider.hits["/auth/tokenrequest"] == 2


def test_auth_does_not_retry_other_401s(provider: Provider) -> None:
    # The JWT grants {"*": ["*"]}, which does not cover a [qualified] channel.
    client = TokenClient(provider.url + "/auth/jwt", now_ms=provider.clock)
    app_hits = provider.hits
    response = requests.get(provider.url + "/protected/[meta]x", auth=client.auth)
    assert response.status_code == 401
    assert response.headers["X-Ably-ErrorCode"] == "40160"
    assert not response.history
    assert app_hits["/protected/[meta]x"] == 1
    assert app_hits["/auth/jwt"] == 1


def test_auth_retry_resends_the_body(provider: Provider) -> None:
    app = Flask(__name__)
    bodies: list[bytes] = []
    calls = {"n": 0}

    @app.post("/echo")
    def echo() -> Response:
        calls["n"] += 1
        bodies.append(request.get_data())
        if calls["n"] == 1:
            raise TokenReqError("Token expired", code=40142, status=401)
        return json_response({"ok": True})

    client = TokenClient(provider.url + "/auth/details", now_ms=provider.clock)
    with serve_app(app) as url:
        response = requests.post(url + "/echo", data=b"payload", auth=client.auth)
    assert response.status_code == 200
    assert bodies == [b"payload", b"payload"]


def test_jwt_times() -> None:
    token = jwt.encode({"iat": 10, "exp": 70}, SIGNING_SECRET, algorithm="HS256")
    assert jwt_times(token) == (10_000, 70_000)
    assert jwt_times("not-a-jwt") == (None, None)
    assert jwt_times("a.b.c") == (None, None)
    assert jwt_times("a.bnVsbA.c") == (None, None)  # payload "null"
    # Not a time to renew by: infinite, NaN or too large a number (JSON as Python reads it).
    for claims in ('{"iat":1,"exp":1e999}', '{"iat":1,"exp":NaN}', '{"iat":1,"exp":1e307}'):
        payload = base64.urlsafe_b64encode(claims.encode()).rstrip(b"=").decode()
        assert jwt_times(f"a.{payload}.c") == (1000, None)
