"""The provider's exchange endpoint, through Flask's test client.

Covers the check order of ``POST /keys/<keyName>/requestToken``, its error
responses, the nonce store failing closed, ``GET /time``, CORS, msgpack and
config validation. Every response is checked for the key secret.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import msgpack
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_tokenreq import Capability, TokenRequest, sign_token_request
from flask_tokenreq.errors import ConfigError, StoreUnavailable
from flask_tokenreq.keys import ApiKey, StaticKeyStore
from flask_tokenreq.keys.base import MAX_EXPIRES_MS
from flask_tokenreq.provider import CORS_HEADERS, TokenProvider
from flask_tokenreq.stores import MemoryNonceStore, open_nonce_store
from flask_tokenreq.tokenrequest import compute_mac

from .conftest import KEY, KEY_NAME, OTHER_KEY, OTHER_SECRET, SECRET, FakeClock

SIGNING_SECRET = "provider-signing-secret-0123456789abcdef-XYZ"
EXCHANGE = f"/keys/{KEY_NAME}/requestToken"
ABLY_JS_HEADERS = {"X-Ably-Version": "5", "Ably-Agent": "ably-js/2.28.0 browser"}
ALL = '{"[*]*":["*"]}'


class CheckedClient(FlaskClient):
    """A test client that fails a test whenever a response shows a secret."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        data = response.get_data()
        headers = str(response.headers).encode()
        for secret in (SECRET, OTHER_SECRET, SIGNING_SECRET):
            assert secret.encode() not in data
            assert secret.encode() not in headers
        return response


def make_app(
    clock: FakeClock,
    *,
    keys: Any = None,
    nonces: Any = None,
    instance_path: str | None = None,
    **config: Any,
) -> tuple[Flask, TokenProvider]:
    app = Flask(__name__, instance_path=instance_path)
    app.test_client_class = CheckedClient
    app.config.update(
        TESTING=True,
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=[KEY, {"key": OTHER_KEY, "capability": {"chat:*": ["subscribe"]}}],
    )
    app.config.update(config)
    if nonces is None:
        nonces = MemoryNonceStore(now_ms=clock, warn=False)
    provider = TokenProvider(app, keys=keys, nonces=nonces, now_ms=clock)
    return app, provider


@pytest.fixture
def app(clock: FakeClock) -> Flask:
    return make_app(clock)[0]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, body: Any, *, path: str = EXCHANGE, **kwargs: Any) -> TestResponse:
    if isinstance(body, TokenRequest):
        body = body.to_json()
    elif not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    headers = {"Content-Type": "application/json", **ABLY_JS_HEADERS, **kwargs.pop("headers", {})}
    return client.post(path, data=body, headers=headers, **kwargs)


def sign(clock: FakeClock, key: str = KEY, **kwargs: Any) -> TokenRequest:
    kwargs.setdefault("timestamp", clock())
    return sign_token_request(key, **kwargs)


def signed_dict(secret: str = SECRET, **fields: Any) -> dict[str, Any]:
    """A wire TokenRequest with a MAC over the fields exactly as given."""
    text = "".join(
        f"{'' if fields.get(name) is None else fields[name]}\n"
        for name in ("keyName", "ttl", "capability", "clientId", "timestamp", "nonce")
    )
    return {**fields, "mac": compute_mac(text, secret)}


def assert_error(response: TestResponse, status: int, code: int) -> dict[str, Any]:
    """The Ably error shape, headers and content type; returns the error object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Ably-ErrorCode"] == str(code)
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "code", "statusCode"}
    assert error["code"] == code
    assert error["statusCode"] == status
    assert isinstance(error["message"], str)
    assert error["message"]
    assert response.headers["X-Ably-ErrorMessage"]
    assert "Traceback" not in response.get_data(as_text=True)
    return dict(error)


# -- happy path ------------------------------------------------------------------------


def test_exchange_returns_token_details(app: Flask, client: FlaskClient, clock: FakeClock) -> None:
    treq = sign(clock, ttl=60_000, capability={"chat:*": ["publish"]}, client_id="alice")
    response = post(client, treq)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    details = response.get_json()
    assert set(details) == {"token", "keyName", "issued", "expires", "capability", "clientId"}
    assert details["keyName"] == KEY_NAME
    assert details["issued"] == clock()
    assert isinstance(details["issued"], int)
    assert details["expires"] == clock() + 60_000
    assert isinstance(details["expires"], int)
    assert details["capability"] == '{"chat:*":["publish"]}'
    assert details["clientId"] == "alice"
    provider: TokenProvider = app.extensions["tokenreq_provider"]
    with app.app_context():
        identity = provider.verify_token(details["token"])
    assert identity.key_name == KEY_NAME
    assert identity.client_id == "alice"
    assert identity.capability == Capability({"chat:*": ["publish"]})
    assert identity.kind == "token"
    header = jwt.get_unverified_header(details["token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "HS256"
    assert header["kid"]
    claims = jwt.decode(
        details["token"], SIGNING_SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )
    assert claims["keyName"] == KEY_NAME
    assert claims["clientId"] == "alice"
    assert claims["capability"] == '{"chat:*":["publish"]}'
    assert claims["iss"] == "flask-tokenreq"
    assert claims["exp"] - claims["iat"] == 60
    assert len(claims["jti"]) >= 22  # 128 bits, base64url


def test_defaults_ttl_and_key_capability_and_no_client_id(
    client: FlaskClient, clock: FakeClock
) -> None:
    details = post(client, sign(clock)).get_json()
    assert details["expires"] - details["issued"] == 3_600_000
    assert details["capability"] == ALL
    assert "clientId" not in details


def test_ably_python_form_with_nulls_and_spaced_capability(
    client: FlaskClient, clock: FakeClock
) -> None:
    body = signed_dict(
        keyName=KEY_NAME,
        ttl=None,
        capability='{"*": ["*"]}',
        clientId=None,
        timestamp=clock(),
        nonce="0123456789abcdef0123",
    )
    assert set(body) == {"keyName", "ttl", "capability", "clientId", "timestamp", "nonce", "mac"}
    response = post(client, body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["capability"] == '{"*":["*"]}'


def test_capability_is_intersected_with_the_key(client: FlaskClient, clock: FakeClock) -> None:
    treq = sign(clock, OTHER_KEY, capability={"chat:room": ["subscribe", "publish"]})
    response = post(client, treq, path="/keys/appid.other/requestToken")
    assert response.status_code == 200
    assert response.get_json()["capability"] == '{"chat:room":["subscribe"]}'


def test_absent_capability_is_the_keys(client: FlaskClient, clock: FakeClock) -> None:
    response = post(client, sign(clock, OTHER_KEY), path="/keys/appid.other/requestToken")
    assert response.get_json()["capability"] == '{"chat:*":["subscribe"]}'


def test_key_expiry_caps_token_expiry(clock: FakeClock) -> None:
    keys = StaticKeyStore([ApiKey(KEY_NAME, SECRET, expires_at_ms=clock() + 10_000)])
    app, _ = make_app(clock, keys=keys)
    details = post(app.test_client(), sign(clock)).get_json()
    assert details["expires"] == clock() + 10_000


def test_msgpack_body_and_msgpack_response(client: FlaskClient, clock: FakeClock) -> None:
    body = msgpack.packb(sign(clock, client_id="bob").to_dict())
    response = client.post(
        EXCHANGE,
        data=body,
        headers={"Content-Type": "application/x-msgpack", "Accept": "application/x-msgpack"},
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-msgpack"
    assert response.headers["Cache-Control"] == "no-store"
    details = msgpack.unpackb(response.get_data())
    assert details["clientId"] == "bob"
    assert details["keyName"] == KEY_NAME


def test_invalid_msgpack_is_40001(client: FlaskClient) -> None:
    response = client.post(
        EXCHANGE, data=b"\xc1\xff", headers={"Content-Type": "application/x-msgpack"}
    )
    assert_error(response, 400, 40001)


def test_json_accept_wins_ties(client: FlaskClient, clock: FakeClock) -> None:
    response = post(
        client, sign(clock), headers={"Accept": "application/json, application/x-msgpack"}
    )
    assert response.headers["Content-Type"] == "application/json"


# -- check order -----------------------------------------------------------------------


def test_bad_mac_beats_stale_timestamp(client: FlaskClient, clock: FakeClock) -> None:
    body = sign(clock, timestamp=clock() - 3_600_000).to_dict()
    body["mac"] = "AAAA" + body["mac"][4:]
    assert_error(post(client, body), 401, 40101)


def test_unknown_key_is_40101(client: FlaskClient, clock: FakeClock) -> None:
    key = "appid.nobody:" + SECRET
    response = post(client, sign(clock, key), path="/keys/appid.nobody/requestToken")
    assert_error(response, 401, 40101)


def test_revoked_key_is_40131_before_mac(clock: FakeClock) -> None:
    app, _ = make_app(clock, TOKENREQ_PROVIDER_KEYS=[{"key": KEY, "revoked": True}])
    body = sign(clock).to_dict()
    body["mac"] = "wrong"
    assert_error(post(app.test_client(), body), 401, 40131)


def test_expired_key_is_40132(clock: FakeClock) -> None:
    app, _ = make_app(clock, TOKENREQ_PROVIDER_KEYS=[{"key": KEY, "expires": clock() - 1}])
    assert_error(post(app.test_client(), sign(clock)), 401, 40132)


def test_the_longest_static_key_name_and_latest_expires_work(clock: FakeClock) -> None:
    """The limits checked at init_app are those of the exchange (no 503 within them)."""
    key = f"a.{'k' * 253}:{SECRET}"
    app, _ = make_app(clock, TOKENREQ_PROVIDER_KEYS=[{"key": key, "expires": MAX_EXPIRES_MS}])
    treq = sign(clock, key)
    assert (
        post(app.test_client(), treq, path=f"/keys/{treq.key_name}/requestToken").status_code == 200
    )


def test_bad_mac_leaves_no_nonce_behind(client: FlaskClient, clock: FakeClock) -> None:
    good = sign(clock, nonce="nonce-0123456789abcdef")
    bad = good.to_dict() | {"mac": sign(clock, nonce="another-nonce-0123456789").mac}
    assert_error(post(client, bad), 401, 40101)
    assert post(client, good).status_code == 200


class RecordingStore:
    """A nonce store that records claims (checks the store is not reached)."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryNonceStore(now_ms=clock, warn=False)
        self.claims: list[tuple[str, str, int]] = []

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        self.claims.append((key_name, nonce, expires_at_ms))
        return self.inner.claim(key_name, nonce, expires_at_ms)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_store_is_only_reached_after_every_other_check(clock: FakeClock) -> None:
    store = RecordingStore(clock)
    app, _ = make_app(
        clock, nonces=store, TOKENREQ_PROVIDER_KEYS=[{"key": KEY, "capability": {"a": ["publish"]}}]
    )
    client = app.test_client()
    bad_mac = sign(clock).to_dict() | {"mac": "x" * 44}
    assert_error(post(client, bad_mac), 401, 40101)
    assert_error(post(client, sign(clock, timestamp=clock() - 200_000)), 401, 40104)
    assert_error(post(client, sign(clock, ttl=86_400_001)), 400, 40003)
    assert_error(post(client, sign(clock, capability={"b": ["publish"]})), 401, 40160)
    assert store.claims == []
    treq = sign(clock)
    assert post(client, treq).status_code == 200
    assert store.claims == [(KEY_NAME, treq.nonce, treq.timestamp + 120_000 + 60_000)]


@pytest.mark.parametrize("offset", [-120_001, 120_001, -3_600_000, 3_600_000])
def test_timestamp_outside_window_is_40104(
    client: FlaskClient, clock: FakeClock, offset: int
) -> None:
    error = assert_error(post(client, sign(clock, timestamp=clock() + offset)), 401, 40104)
    assert "Timestamp not current" in error["message"]
    assert "clock skew" in error["message"]
    assert "GET /time" in error["message"]


@pytest.mark.parametrize("offset", [-120_000, 120_000, 0])
def test_timestamp_at_window_edge_is_accepted(
    client: FlaskClient, clock: FakeClock, offset: int
) -> None:
    assert post(client, sign(clock, timestamp=clock() + offset)).status_code == 200


def test_window_is_configurable(clock: FakeClock) -> None:
    app, _ = make_app(clock, TOKENREQ_TIMESTAMP_WINDOW=10)
    client = app.test_client()
    assert_error(post(client, sign(clock, timestamp=clock() - 10_001)), 401, 40104)
    assert post(client, sign(clock, timestamp=clock() - 10_000)).status_code == 200


def test_replay_is_40105(client: FlaskClient, clock: FakeClock) -> None:
    treq = sign(clock)
    assert post(client, treq).status_code == 200
    error = assert_error(post(client, treq), 401, 40105)
    assert error["message"].startswith("Nonce value replayed")


def test_replay_one_second_before_window_closes_is_rejected(
    client: FlaskClient, clock: FakeClock
) -> None:
    treq = sign(clock)
    assert post(client, treq).status_code == 200
    clock.advance(120_000 - 1000)
    assert_error(post(client, treq), 401, 40105)
    clock.advance(1000)  # the last accepted millisecond
    assert_error(post(client, treq), 401, 40105)
    clock.advance(1)  # now the timestamp is stale
    assert_error(post(client, treq), 401, 40104)


def test_future_timestamp_replay_is_rejected(client: FlaskClient, clock: FakeClock) -> None:
    treq = sign(clock, timestamp=clock() + 120_000)
    assert post(client, treq).status_code == 200
    clock.advance(240_000)  # the timestamp's window closes now
    assert_error(post(client, treq), 401, 40105)


def test_same_nonce_on_two_keys_is_independent(client: FlaskClient, clock: FakeClock) -> None:
    nonce = "shared-nonce-0123456789"
    assert post(client, sign(clock, nonce=nonce)).status_code == 200
    other = sign(clock, OTHER_KEY, nonce=nonce)
    assert post(client, other, path="/keys/appid.other/requestToken").status_code == 200


def test_ttl_too_long_is_40003(client: FlaskClient, clock: FakeClock) -> None:
    error = assert_error(post(client, sign(clock, ttl=86_400_001)), 400, 40003)
    assert "milliseconds" in error["message"]
    assert post(client, sign(clock, ttl=86_400_000)).status_code == 200


def test_max_ttl_is_configurable(clock: FakeClock) -> None:
    app, _ = make_app(clock, TOKENREQ_MAX_TTL=60_000, TOKENREQ_DEFAULT_TTL=30_000)
    client = app.test_client()
    assert_error(post(client, sign(clock, ttl=60_001)), 400, 40003)
    details = post(client, sign(clock)).get_json()
    assert details["expires"] - details["issued"] == 30_000


def test_empty_capability_intersection_is_40160(client: FlaskClient, clock: FakeClock) -> None:
    treq = sign(clock, OTHER_KEY, capability={"other": ["publish"]})
    response = post(client, treq, path="/keys/appid.other/requestToken")
    assert_error(response, 401, 40160)


def test_empty_capability_object_is_40160(client: FlaskClient, clock: FakeClock) -> None:
    assert_error(post(client, sign(clock, capability={})), 401, 40160)


def test_malformed_capability_with_valid_mac_is_40000(
    client: FlaskClient, clock: FakeClock
) -> None:
    for capability in ("not json", '["publish"]', '{"a": "publish"}'):
        body = signed_dict(
            keyName=KEY_NAME, capability=capability, timestamp=clock(), nonce="n" * 20
        )
        assert_error(post(client, body), 400, 40000)


def test_empty_string_capability_means_the_keys(client: FlaskClient, clock: FakeClock) -> None:
    body = signed_dict(keyName=KEY_NAME, capability="", timestamp=clock(), nonce="n" * 20)
    assert post(client, body).get_json()["capability"] == ALL


# -- malformed requests ----------------------------------------------------------------


def _valid(clock: FakeClock) -> dict[str, Any]:
    return sign(clock).to_dict()


MALFORMED: list[tuple[str, Any, int, int]] = [
    ("not json", "{not json", 400, 40001),
    ("empty", "", 400, 40001),
    ("array", "[]", 400, 40001),
    ("string", '"hello"', 400, 40001),
    ("null", "null", 400, 40001),
    ("number", "12", 400, 40001),
    ("timestamp string", lambda d: d | {"timestamp": str(d["timestamp"])}, 400, 40001),
    ("timestamp bool", lambda d: d | {"timestamp": True}, 400, 40001),
    ("timestamp float", lambda d: d | {"timestamp": 1.5}, 400, 40001),
    ("ttl bool", lambda d: d | {"ttl": True}, 400, 40001),
    ("ttl string", lambda d: d | {"ttl": "60000"}, 400, 40001),
    ("ttl zero", lambda d: d | {"ttl": 0}, 400, 40003),
    ("ttl negative", lambda d: d | {"ttl": -5}, 400, 40003),
    ("nonce int", lambda d: d | {"nonce": 1234567890123456789}, 400, 40001),
    ("nonce short", lambda d: d | {"nonce": "123456789012345"}, 400, 40001),
    ("nonce huge", lambda d: d | {"nonce": "n" * 300}, 400, 40001),
    ("no nonce", lambda d: {k: v for k, v in d.items() if k != "nonce"}, 400, 40001),
    ("no mac", lambda d: {k: v for k, v in d.items() if k != "mac"}, 400, 40001),
    ("no timestamp", lambda d: {k: v for k, v in d.items() if k != "timestamp"}, 400, 40001),
    ("mac list", lambda d: d | {"mac": ["x"]}, 400, 40001),
    ("capability object", lambda d: d | {"capability": {"*": ["*"]}}, 400, 40001),
    ("unknown field", lambda d: d | {"extra": 1}, 400, 40001),
    ("clientId empty", lambda d: d | {"clientId": ""}, 400, 40012),
    ("clientId newline", lambda d: d | {"clientId": "a\nb"}, 400, 40001),
    ("keyName mismatch", lambda d: d | {"keyName": "appid.other"}, 400, 40001),
    ("keyName number", lambda d: d | {"keyName": 5}, 400, 40001),
    ("deep nesting", "[" * 100_00 + "]" * 100_00, 400, 40001),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "code"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_bodies_are_4xx_with_code(
    client: FlaskClient, clock: FakeClock, name: str, body: Any, status: int, code: int
) -> None:
    if callable(body):
        body = json.dumps(body(_valid(clock)))
    assert_error(post(client, body), status, code)


def test_huge_body_is_40001(client: FlaskClient, clock: FakeClock) -> None:
    body = _valid(clock) | {"capability": json.dumps({f"c{i}": ["*"] for i in range(2000)})}
    error = assert_error(post(client, body), 400, 40001)
    assert "too large" in error["message"]


def test_huge_body_without_content_length_is_40001(client: FlaskClient) -> None:
    big = b'{"keyName":"' + b"x" * 20_000 + b'"}'
    response = client.post(
        EXCHANGE,
        input_stream=io.BytesIO(big),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert_error(response, 400, 40001)


def test_body_limit_is_configurable(clock: FakeClock) -> None:
    app, _ = make_app(clock, TOKENREQ_MAX_BODY_BYTES=300)
    body = _valid(clock) | {"capability": json.dumps({f"c{i}": ["*"] for i in range(30)})}
    assert_error(post(app.test_client(), body), 400, 40001)


def test_form_body_is_40001(client: FlaskClient, clock: FakeClock) -> None:
    response = client.post(EXCHANGE, data=_valid(clock))
    assert_error(response, 400, 40001)


# -- errors, routing, unexpected failures ----------------------------------------------


def test_unknown_path_under_keys_is_ably_404(client: FlaskClient) -> None:
    assert_error(client.get(f"/keys/{KEY_NAME}/nothing"), 404, 40400)
    assert_error(client.post("/keys/a/b/c/requestToken"), 404, 40400)


def test_wrong_method_is_ably_405(client: FlaskClient) -> None:
    response = client.get(EXCHANGE)
    assert_error(response, 405, 40500)
    assert "POST" in response.headers["Allow"]
    assert_error(client.post("/time"), 405, 40500)


class ExplodingKeys:
    def get(self, key_name: str) -> ApiKey | None:
        raise RuntimeError("database exploded: password=hunter2")


def test_unexpected_exception_is_generic_500(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(clock, keys=ExplodingKeys())
    with caplog.at_level(logging.ERROR, logger="flask_tokenreq.provider"):
        response = post(app.test_client(), sign(clock))
    error = assert_error(response, 500, 50000)
    assert "hunter2" not in response.get_data(as_text=True)
    assert "exploded" not in error["message"]
    assert any("unexpected" in r.getMessage() for r in caplog.records)


# -- the nonce store failing closed ----------------------------------------------------


class BrokenStore:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def claim(self, key_name: str, nonce: str, expires_at_ms: int) -> bool:
        raise self.exc

    def ping(self) -> None:
        raise self.exc

    def close(self) -> None:
        return None


@pytest.mark.parametrize("exc", [StoreUnavailable(), RuntimeError("boom"), OSError("disk")])
def test_store_failure_is_503_50003(clock: FakeClock, exc: Exception) -> None:
    app, _ = make_app(clock, nonces=BrokenStore(exc))
    client = app.test_client()
    treq = sign(clock)
    for _ in range(2):
        assert_error(post(client, treq), 503, 50003)


@pytest.mark.parametrize("skew", [30_000, 59_000])
def test_a_host_whose_clock_is_behind_refuses_a_replay_after_the_other_purged(
    tmp_path: Path, skew: int
) -> None:
    """Two hosts share a SQL nonce store; host A's clock runs ``skew`` ms ahead of B's.

    Each purges expired claims on its own clock. B accepts a TokenRequest until
    its clock reaches ``timestamp + window``; A must not have purged the claim by then.
    """
    url = f"sqlite:///{tmp_path / 'nonces.sqlite3'}"
    clock_b = FakeClock()
    clock_a = FakeClock(clock_b() + skew)
    store_a = open_nonce_store(url, now_ms=clock_a)
    store_b = open_nonce_store(url, now_ms=clock_b)
    try:
        host_a = make_app(clock_a, nonces=store_a)[0].test_client()
        host_b = make_app(clock_b, nonces=store_b)[0].test_client()
        treq = sign(clock_b)
        assert post(host_a, treq).status_code == 200
        clock_a.advance(120_000)  # B's last millisecond inside the window
        clock_b.advance(120_000)
        store_a.purge()  # A's periodic purge, on A's clock
        assert_error(post(host_b, treq), 401, 40105)
    finally:
        store_a.close()
        store_b.close()


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:1/0", "postgresql+psycopg://nobody@127.0.0.1:1/none"],
    ids=["redis", "postgres"],
)
def test_unreachable_store_is_503_and_nothing_accepted(clock: FakeClock, url: str) -> None:
    store = open_nonce_store(url, now_ms=clock)
    try:
        app, _ = make_app(clock, nonces=store)
        client = app.test_client()
        for _ in range(2):
            assert_error(post(client, sign(clock)), 503, 50003)
    finally:
        store.close()


def test_default_store_is_sqlite_in_instance_folder(clock: FakeClock, tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY])
    provider = TokenProvider(app, now_ms=clock)
    try:
        client = app.test_client()
        treq = sign(clock)
        assert post(client, treq).status_code == 200
        assert_error(post(client, treq), 401, 40105)
        assert any((tmp_path / "instance").iterdir())
    finally:
        provider.close()


def test_nonce_store_from_config(clock: FakeClock) -> None:
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=[KEY],
        TOKENREQ_NONCE_STORE="memory://",
    )
    provider = TokenProvider(app, now_ms=clock)
    with app.app_context():
        assert isinstance(provider.nonces, MemoryNonceStore)


# -- /time, CORS, prefix -----------------------------------------------------------------


def test_time(client: FlaskClient, clock: FakeClock) -> None:
    response = client.get("/time")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json() == [clock()]


def test_cors_preflight_and_headers(clock: FakeClock) -> None:
    app, _ = make_app(clock, TOKENREQ_PROVIDER_CORS_ORIGINS=["https://app.example"])
    client = app.test_client()
    preflight = client.options(
        EXCHANGE,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-ably-version,ably-agent",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = {h.strip() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert set(CORS_HEADERS) <= allowed
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    ok = post(client, sign(clock), headers={"Origin": "https://app.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    bad = post(client, {"x": 1}, headers={"Origin": "https://app.example"})
    assert bad.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Ably-ErrorCode" in bad.headers["Access-Control-Expose-Headers"]
    evil = client.options(EXCHANGE, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers
    time = client.get("/time", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in time.headers


def test_url_prefix(clock: FakeClock) -> None:
    app, _ = make_app(clock, TOKENREQ_PROVIDER_URL_PREFIX="/ably/")
    client = app.test_client()
    assert client.get("/ably/time").get_json() == [clock()]
    assert client.get("/time").status_code == 404
    assert post(client, sign(clock), path=f"/ably{EXCHANGE}").status_code == 200
    error = assert_error(
        post(client, sign(clock, timestamp=0), path=f"/ably{EXCHANGE}"), 401, 40104
    )
    assert "GET /ably/time" in error["message"]


def test_register_blueprint_yourself(clock: FakeClock) -> None:
    app = Flask(__name__)
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY])
    provider = TokenProvider(nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    provider.init_app(app, register_blueprint=False)
    assert "tokenreq_provider" not in app.blueprints
    app.register_blueprint(provider.blueprint, url_prefix="/p")
    client = app.test_client()
    assert client.get("/p/time").get_json() == [clock()]
    stale = post(client, sign(clock, timestamp=0), path=f"/p{EXCHANGE}")
    assert "GET /p/time" in assert_error(stale, 401, 40104)["message"]
    assert app.extensions["tokenreq_provider"] is provider


def test_in_process_exchange(app: Flask, clock: FakeClock) -> None:
    provider: TokenProvider = app.extensions["tokenreq_provider"]
    with app.app_context():
        issued = provider.exchange(sign(clock, client_id="c"))
        assert provider.verify_token(issued.token).client_id == "c"
    assert "token" not in repr(issued).lower().replace("issuedtoken", "").replace("token_id", "")


# -- audit -----------------------------------------------------------------------------


def test_audit_log_lines(
    client: FlaskClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    treq = sign(clock, client_id="alice")
    with caplog.at_level(logging.DEBUG):
        details = post(client, treq).get_json()
        post(client, treq)
    audit = [r for r in caplog.records if r.name == "flask_tokenreq.audit"]
    assert len(audit) == 2
    issued, refused = audit
    jti = jwt.decode(details["token"], options={"verify_signature": False})["jti"]
    assert "issued" in issued.getMessage()
    assert KEY_NAME in issued.getMessage()
    assert "alice" in issued.getMessage()
    assert jti in issued.getMessage()
    assert issued.tokenreq["outcome"] == "issued"  # type: ignore[attr-defined]
    assert "refused" in refused.getMessage()
    assert "40105" in refused.getMessage()
    for record in caplog.records:
        text = record.getMessage() + str(getattr(record, "tokenreq", ""))
        assert SECRET not in text
        assert SIGNING_SECRET not in text
        assert details["token"] not in text
        assert treq.mac not in text


# -- configuration ----------------------------------------------------------------------


def _init(clock: FakeClock, **config: Any) -> None:
    app = Flask(__name__)
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY])
    app.config.update(config)
    TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        ({"TOKENREQ_PROVIDER_KEYS": KEY}, "TOKENREQ_PROVIDER_KEYS"),
        ({"TOKENREQ_PROVIDER_KEYS": ["no-colon"]}, "TOKENREQ_PROVIDER_KEYS[0]"),
        # Longer than the nonce stores' key names: every exchange would be a 503.
        ({"TOKENREQ_PROVIDER_KEYS": [f"a.{'k' * 254}:{SECRET}"]}, "TOKENREQ_PROVIDER_KEYS[0]"),
        (
            {"TOKENREQ_PROVIDER_KEYS": [{"key": KEY, "expires": 2**63}]},
            "TOKENREQ_PROVIDER_KEYS[0].expires",
        ),
        (
            {"TOKENREQ_PROVIDER_KEYS": [{"key": KEY, "expires": MAX_EXPIRES_MS + 1}]},
            "TOKENREQ_PROVIDER_KEYS[0].expires",
        ),
        ({"TOKENREQ_TIMESTAMP_WINDOW": "two minutes"}, "TOKENREQ_TIMESTAMP_WINDOW"),
        ({"TOKENREQ_TIMESTAMP_WINDOW": 1.5}, "TOKENREQ_TIMESTAMP_WINDOW"),
        ({"TOKENREQ_TIMESTAMP_WINDOW": 0}, "TOKENREQ_TIMESTAMP_WINDOW"),
        ({"TOKENREQ_MAX_TTL": True}, "TOKENREQ_MAX_TTL"),
        ({"TOKENREQ_DEFAULT_TTL": 100_000_000}, "TOKENREQ_DEFAULT_TTL"),
        ({"TOKENREQ_LEEWAY": "x"}, "TOKENREQ_LEEWAY"),
        ({"TOKENREQ_MAX_BODY_BYTES": "big"}, "TOKENREQ_MAX_BODY_BYTES"),
        ({"TOKENREQ_SIGNING_SECRET": "short"}, "TOKENREQ_SIGNING_SECRET"),
        ({"TOKENREQ_SIGNING_SECRET": None}, "TOKENREQ_SIGNING_SECRET"),
        ({"TOKENREQ_TOKEN_ALGORITHM": "RS256"}, "TOKENREQ_TOKEN_ALGORITHM"),
        ({"TOKENREQ_TOKEN_ALGORITHM": "none"}, "TOKENREQ_TOKEN_ALGORITHM"),
        ({"TOKENREQ_TOKEN_ALGORITHM": "EdDSA"}, "TOKENREQ_SIGNING_KEY"),
        ({"TOKENREQ_PROVIDER_CORS_ORIGINS": "https://a.example"}, "TOKENREQ_PROVIDER_CORS_ORIGINS"),
        ({"TOKENREQ_PROVIDER_URL_PREFIX": "ably"}, "TOKENREQ_PROVIDER_URL_PREFIX"),
        ({"TOKENREQ_NONCE_STORE": "ftp://x"}, "TOKENREQ_NONCE_STORE"),
    ],
)
def test_bad_config_names_the_setting(
    clock: FakeClock, config: Mapping[str, Any], setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKENREQ_SIGNING_SECRET", raising=False)
    app = Flask(__name__)
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY])
    app.config.update(config)
    nonces = (
        None if "TOKENREQ_NONCE_STORE" in config else MemoryNonceStore(now_ms=clock, warn=False)
    )
    with pytest.raises(ConfigError) as info:
        TokenProvider(app, nonces=nonces, now_ms=clock)
    assert setting in str(info.value)
    assert SECRET not in str(info.value)


def test_missing_keys_setting(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENREQ_PROVIDER_KEYS", raising=False)
    app = Flask(__name__)
    app.config["TOKENREQ_SIGNING_SECRET"] = SIGNING_SECRET
    with pytest.raises(ConfigError, match="TOKENREQ_PROVIDER_KEYS"):
        TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)


@pytest.mark.parametrize("keys", [None, []])
def test_an_empty_keys_list_is_no_keys(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, keys: list[str] | None
) -> None:
    """``TOKENREQ_PROVIDER_KEYS=[]`` (or ``keys=[]``) is refused like no keys at all,
    rather than every exchange being 40101."""
    monkeypatch.delenv("TOKENREQ_PROVIDER_KEYS", raising=False)
    app = Flask(__name__)
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[])
    nonces = MemoryNonceStore(now_ms=clock, warn=False)
    with pytest.raises(ConfigError, match="the provider has no keys"):
        TokenProvider(app, keys=keys, nonces=nonces, now_ms=clock)


def test_keys_from_environment(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENREQ_PROVIDER_KEYS", json.dumps([KEY]))
    app = Flask(__name__)
    app.config["TOKENREQ_SIGNING_SECRET"] = SIGNING_SECRET
    TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    assert post(app.test_client(), sign(clock)).status_code == 200


def test_keys_argument_as_list(clock: FakeClock) -> None:
    app, _ = make_app(clock, keys=[OTHER_KEY])
    client = app.test_client()
    assert_error(post(client, sign(clock)), 401, 40101)
    assert (
        post(client, sign(clock, OTHER_KEY), path="/keys/appid.other/requestToken").status_code
        == 200
    )
