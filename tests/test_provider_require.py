"""``provider.require()`` on app routes outside the provider blueprint."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest
from flask import Flask, g
from flask.testing import FlaskClient

from flask_tokenreq.keys import ApiKey, StaticKeyStore
from flask_tokenreq.provider import TokenProvider, current_identity
from flask_tokenreq.stores import MemoryNonceStore
from flask_tokenreq.tokens import Identity

from .conftest import KEY, KEY_NAME, OTHER_KEY, OTHER_SECRET, SECRET, FakeClock
from .test_provider import SIGNING_SECRET, CheckedClient, assert_error, post, sign

T = 1_700_000_000


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def build(clock: FakeClock, keys: Any = None) -> tuple[Flask, TokenProvider]:
    app = Flask(__name__)
    app.test_client_class = CheckedClient
    app.config.update(
        TESTING=True,
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=[KEY, {"key": OTHER_KEY, "capability": {"chat:*": ["subscribe"]}}],
    )
    provider = TokenProvider(
        app, keys=keys, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock
    )

    def describe() -> dict[str, Any]:
        identity: Identity = g.tokenreq
        assert current_identity() is identity
        return {
            "keyName": identity.key_name,
            "clientId": identity.client_id,
            "capability": identity.capability.canonical,
            "kind": identity.kind,
            "tokenId": identity.token_id,
        }

    @app.get("/channels/<name>/messages")
    @provider.require("history", resource="{name}")
    def history(name: str) -> dict[str, Any]:
        return describe()

    @app.post("/channels/<name>/messages")
    @provider.require("publish", resource=lambda name: name)
    def publish(name: str) -> dict[str, Any]:
        return describe()

    @app.get("/rooms/<room>")
    @provider.require("subscribe", resource="chat:{room}")
    def room(room: str) -> dict[str, Any]:
        return describe()

    @app.get("/fixed")
    @provider.require("publish", resource="announcements")
    def fixed() -> dict[str, Any]:
        return describe()

    @app.get("/stats")
    @provider.require("stats")
    def stats() -> dict[str, Any]:
        return describe()

    @app.post("/server/jobs")
    @provider.require("publish", resource="jobs", key_only=True)
    def server_to_server() -> dict[str, Any]:
        return describe()

    @app.route("/whoami", methods=["GET", "OPTIONS"])
    @provider.require()
    def whoami() -> dict[str, Any]:
        return {"open": True} if g.get("tokenreq") is None else describe()

    return app, provider


@pytest.fixture
def app(clock: FakeClock) -> Flask:
    return build(clock)[0]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token_for(client: FlaskClient, clock: FakeClock, key: str = KEY, **kwargs: Any) -> str:
    key_name = key.partition(":")[0]
    response = post(client, sign(clock, key, **kwargs), path=f"/keys/{key_name}/requestToken")
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_bearer_raw_and_base64(client: FlaskClient, clock: FakeClock) -> None:
    token = token_for(client, clock, client_id="alice")
    for header in (bearer(token), bearer(b64(token)), {"Authorization": f"bearer  {token} "}):
        response = client.get("/channels/news/messages", headers=header)
        assert response.status_code == 200
        body = response.get_json()
        assert body["keyName"] == KEY_NAME
        assert body["clientId"] == "alice"
        assert body["kind"] == "token"
        assert body["tokenId"]


def test_resource_forms(client: FlaskClient, clock: FakeClock) -> None:
    token = token_for(client, clock, capability={"chat:*": ["subscribe"], "news": ["publish"]})
    assert client.get("/rooms/lobby", headers=bearer(token)).status_code == 200
    assert client.post("/channels/news/messages", headers=bearer(token)).status_code == 200
    assert_error(client.post("/channels/other/messages", headers=bearer(token)), 401, 40160)
    assert_error(client.get("/channels/news/messages", headers=bearer(token)), 401, 40160)
    assert_error(client.get("/fixed", headers=bearer(token)), 401, 40160)
    assert client.get("/whoami", headers=bearer(token)).status_code == 200


def test_operation_without_resource(client: FlaskClient, clock: FakeClock) -> None:
    allowed = token_for(client, clock, capability={"[*]*": ["stats"]})
    assert client.get("/stats", headers=bearer(allowed)).status_code == 200
    refused = token_for(client, clock, capability={"*": ["publish"]})
    assert_error(client.get("/stats", headers=bearer(refused)), 401, 40160)


def test_missing_and_unsupported_credentials(client: FlaskClient) -> None:
    error = assert_error(client.get("/channels/a/messages"), 401, 40100)
    assert "Bearer" in error["message"]
    assert_error(client.get("/whoami", headers={"Authorization": "Digest x"}), 401, 40100)
    assert_error(client.get("/whoami", headers={"Authorization": "Bearer"}), 401, 40100)


@pytest.mark.parametrize(
    "value",
    ["garbage", "not base64 !", b64("no dots here"), b64(b"\xff\xfe.\x00"), "a.b.c", "é.é.é"],
)
def test_garbage_bearer_is_40144(client: FlaskClient, value: str) -> None:
    assert_error(client.get("/whoami", headers=bearer(value)), 401, 40144)


def test_oversized_bearer_is_40144(client: FlaskClient) -> None:
    assert_error(client.get("/whoami", headers=bearer("A" * 50_000)), 401, 40144)


def test_expired_token_is_40142(client: FlaskClient, clock: FakeClock) -> None:
    token = token_for(client, clock, ttl=10_000)
    clock.advance(10_000 + 5_000)
    assert_error(client.get("/whoami", headers=bearer(token)), 401, 40142)


def test_basic_key_auth(client: FlaskClient) -> None:
    response = client.get("/channels/a/messages", headers={"Authorization": f"Basic {b64(KEY)}"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["kind"] == "basic"
    assert body["clientId"] is None
    assert body["capability"] == '{"[*]*":["*"]}'


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        (f"{KEY_NAME}:{OTHER_SECRET}", 40101),
        (f"{KEY_NAME}:{SECRET}x", 40101),
        (f"{KEY_NAME}:", 40101),
        (f"{KEY_NAME}:sécrét-ünïcode", 40101),
        (f"appid.nobody:{SECRET}", 40101),
        (KEY_NAME, 40101),
    ],
)
def test_basic_wrong_credentials(client: FlaskClient, credentials: str, code: int) -> None:
    headers = {"Authorization": f"Basic {b64(credentials)}"}
    assert_error(client.get("/whoami", headers=headers), 401, code)


@pytest.mark.parametrize("value", ["!!!", b64(b"\xff\xfe:\xff"), "é"])
def test_basic_malformed_is_401_not_500(client: FlaskClient, value: str) -> None:
    response = client.get("/whoami", headers={"Authorization": f"Basic {value}"})
    assert_error(response, 401, 40101)


def test_key_only_takes_the_key_and_refuses_tokens_unverified(
    client: FlaskClient, clock: FakeClock
) -> None:
    """``require(key_only=True)``: Basic key auth passes; any token is 40162, as at revokeTokens."""
    response = client.post("/server/jobs", headers={"Authorization": f"Basic {b64(KEY)}"})
    assert response.status_code == 200
    assert response.get_json()["kind"] == "basic"
    token = token_for(client, clock, capability={"jobs": ["publish"]})
    for header in (bearer(token), bearer(b64(token)), bearer("not-even-a-token")):
        error = assert_error(client.post("/server/jobs", headers=header), 401, 40162)
        assert "not a token" in error["message"]
    error = assert_error(client.post("/server/jobs"), 401, 40100)
    assert "the key itself" in error["message"]
    wrong = {"Authorization": f"Basic {b64(KEY_NAME + ':wrong-secret-0123456789abcdef0123')}"}
    assert_error(client.post("/server/jobs", headers=wrong), 401, 40101)
    other = {"Authorization": f"Basic {b64(OTHER_KEY)}"}  # the key's capability still applies
    assert_error(client.post("/server/jobs", headers=other), 401, 40160)


def test_basic_capability_is_the_keys(client: FlaskClient) -> None:
    headers = {"Authorization": f"Basic {b64(OTHER_KEY)}"}
    assert client.get("/rooms/x", headers=headers).status_code == 200
    assert_error(client.post("/channels/x/messages", headers=headers), 401, 40160)


def test_basic_with_revoked_key(clock: FakeClock) -> None:
    keys = StaticKeyStore([ApiKey(KEY_NAME, SECRET, status="revoked")])
    app, _ = build(clock, keys=keys)
    headers = {"Authorization": f"Basic {b64(KEY)}"}
    assert_error(app.test_client().get("/whoami", headers=headers), 401, 40131)


def test_client_id_header(client: FlaskClient, clock: FakeClock) -> None:
    token = token_for(client, clock, client_id="alice")
    ok = client.get("/whoami", headers=bearer(token) | {"X-Ably-ClientId": b64("alice")})
    assert ok.get_json()["clientId"] == "alice"
    error = assert_error(
        client.get("/whoami", headers=bearer(token) | {"X-Ably-ClientId": b64("mallory")}),
        401,
        40102,
    )
    assert "clientId" in error["message"]
    anonymous = token_for(client, clock)
    assert_error(
        client.get("/whoami", headers=bearer(anonymous) | {"X-Ably-ClientId": b64("alice")}),
        401,
        40102,
    )
    assert_error(
        client.get("/whoami", headers=bearer(token) | {"X-Ably-ClientId": "%%%"}), 400, 40012
    )


def test_wildcard_client_id_takes_the_asserted_one(client: FlaskClient, clock: FakeClock) -> None:
    token = token_for(client, clock, client_id="*")
    body = client.get("/whoami", headers=bearer(token) | {"X-Ably-ClientId": b64("zoe")})
    assert body.get_json()["clientId"] == "zoe"
    assert client.get("/whoami", headers=bearer(token)).get_json()["clientId"] == "*"


def test_basic_may_assert_a_client_id(client: FlaskClient) -> None:
    headers = {"Authorization": f"Basic {b64(KEY)}", "X-Ably-ClientId": b64("svc")}
    assert client.get("/whoami", headers=headers).get_json()["clientId"] == "svc"


def test_ably_jwt_is_accepted(client: FlaskClient) -> None:
    token = jwt.encode(
        {
            "iat": T,
            "exp": T + 600,
            "x-ably-capability": '{"news":["history"]}',
            "x-ably-clientId": "carol",
        },
        SECRET,
        algorithm="HS256",
        headers={"kid": KEY_NAME},
    )
    for header in (bearer(token), bearer(b64(token))):
        response = client.get("/channels/news/messages", headers=header)
        assert response.status_code == 200
        body = response.get_json()
        assert body["kind"] == "ably-jwt"
        assert body["clientId"] == "carol"
    assert_error(client.get("/channels/sport/messages", headers=bearer(token)), 401, 40160)


def test_ably_jwt_capability_is_narrowed_by_the_key(client: FlaskClient) -> None:
    token = jwt.encode(
        {"iat": T, "exp": T + 600, "x-ably-capability": '{"*":["*"]}'},
        OTHER_SECRET,
        algorithm="HS256",
        headers={"kid": "appid.other"},
    )
    assert client.get("/rooms/a", headers=bearer(token)).status_code == 200
    assert_error(client.post("/channels/chat:a/messages", headers=bearer(token)), 401, 40160)


def test_token_of_a_removed_or_revoked_key(client: FlaskClient, clock: FakeClock) -> None:
    token = token_for(client, clock)
    removed, _ = build(clock, keys=StaticKeyStore([ApiKey("appid.other", OTHER_SECRET)]))
    assert_error(removed.test_client().get("/whoami", headers=bearer(token)), 401, 40101)
    revoked, _ = build(clock, keys=StaticKeyStore([ApiKey(KEY_NAME, SECRET, status="revoked")]))
    assert_error(revoked.test_client().get("/whoami", headers=bearer(token)), 401, 40141)


def test_options_passes_through(client: FlaskClient) -> None:
    response = client.open("/whoami", method="OPTIONS")
    assert response.status_code == 200
    assert response.get_json() == {"open": True}


def test_unexpected_error_in_resource_resolution_is_ably_500(clock: FakeClock) -> None:
    app, provider = build(clock)

    @app.get("/broken/<name>")
    @provider.require("publish", resource="{missing}")
    def broken(name: str) -> str:
        return "never"

    response = app.test_client().get("/broken/x", headers={"Authorization": f"Basic {b64(KEY)}"})
    assert_error(response, 500, 50000)


def test_view_errors_are_not_swallowed(clock: FakeClock) -> None:
    app, provider = build(clock)
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.get("/fails")
    @provider.require()
    def fails() -> str:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        app.test_client().get("/fails", headers={"Authorization": f"Basic {b64(KEY)}"})


def test_require_keeps_the_view_name(app: Flask) -> None:
    assert "history" in app.view_functions


def test_provider_not_initialised_for_this_app(clock: FakeClock) -> None:
    _, provider = build(clock)
    other = Flask(__name__)

    @other.get("/x")
    @provider.require()
    def x() -> str:
        return "x"

    assert_error(
        other.test_client().get("/x", headers={"Authorization": f"Basic {b64(KEY)}"}), 500, 50000
    )


def test_async_views_are_guarded_and_awaited(clock: FakeClock) -> None:
    app, provider = build(clock)

    @app.get("/async/<name>")
    @provider.require("history", resource="{name}")
    async def async_history(name: str) -> dict[str, Any]:
        identity = current_identity()
        assert identity is not None
        return {"channel": name, "keyName": identity.key_name}

    client = app.test_client()
    token = token_for(client, clock, capability={"news": ["history"]})
    response = client.get("/async/news", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"channel": "news", "keyName": KEY_NAME}
    assert_error(client.get("/async/sport", headers=bearer(token)), 401, 40160)
    assert_error(client.get("/async/news"), 401, 40100)


def test_refusals_need_no_error_handler_of_the_app(clock: FakeClock) -> None:
    # The app registers nothing: the raised error renders itself (one path).
    app, _ = build(clock)
    assert app.error_handler_spec[None] == {}
    response = app.test_client().get("/stats", headers={"Authorization": "Digest x"})
    assert_error(response, 401, 40100)
