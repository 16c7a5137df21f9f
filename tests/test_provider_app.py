"""examples/provider_app.py served on loopback: the channel resource and its settings."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import requests

from examples import issuer_app, provider_app
from flask_tokenreq.client import bearer, request_token
from flask_tokenreq.clock import now_ms

from .conftest import KEY, KEY_NAME, SECRET, FakeClock
from .servers import serve_app

SIGNING_SECRET = "provider-app-signing-secret-0123456789abcdef"
MSGPACK = "application/x-msgpack"


@dataclass
class Served:
    url: str
    clock: FakeClock

    def token(self, **params: Any) -> str:
        params.setdefault("timestamp", self.clock())
        details = request_token(KEY, self.url, **params)
        return str(details["token"])

    def headers(self, **params: Any) -> dict[str, str]:
        return {"Authorization": bearer(self.token(**params))}

    def publish(self, channel: str, body: Any, headers: dict[str, str]) -> requests.Response:
        return requests.post(f"{self.url}/channels/{channel}/messages", json=body, headers=headers)

    def history(self, channel: str, headers: dict[str, str], **params: Any) -> requests.Response:
        return requests.get(
            f"{self.url}/channels/{channel}/messages", params=params, headers=headers
        )


def settings(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "TOKENREQ_PROVIDER_KEYS": [KEY],
        "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
        "TOKENREQ_NONCE_STORE": "memory://",
        "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp_path / 'messages.sqlite3'}",
        "SECRET_KEY": "test-session-key-0123456789abcdef0123456789",
        **extra,
    }


@pytest.fixture
def served(tmp_path: Path, clock: FakeClock) -> Iterator[Served]:
    app = provider_app.create_app(
        settings(tmp_path), instance_path=str(tmp_path / "instance"), now_ms=clock
    )
    with serve_app(app) as url:
        yield Served(url, clock)


def check_error(response: requests.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Ably-ErrorCode"] == str(code)
    body: dict[str, Any] = response.json()["error"]
    assert (body["code"], body["statusCode"]) == (code, status)
    assert SECRET not in response.text
    return body


# -- publish and history ----------------------------------------------------------------


def test_publish_then_history(served: Served) -> None:
    headers = served.headers(client_id="alice")
    first = served.publish("room", {"name": "greet", "data": "hello"}, headers)
    assert first.status_code == 201, first.text
    assert first.json()["channel"] == "room"
    assert len(first.json()["serials"]) == 1
    served.clock.advance(10)
    batch = [{"name": "a", "data": "1"}, {"name": "b", "data": {"x": [1, 2]}, "extras": {"k": 1}}]
    second = served.publish("room", batch, headers)
    assert second.status_code == 201
    body = second.json()
    assert [s is not None for s in body["serials"]] == [True, True]

    response = served.history("room", headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    messages = response.json()
    assert [m["name"] for m in messages] == ["b", "a", "greet"]  # newest first
    assert messages[0]["data"] == '{"x":[1,2]}'
    assert messages[0]["encoding"] == "json"
    assert messages[0]["extras"] == {"k": 1}
    assert messages[0]["id"] == f"{body['messageId']}:1"
    assert {m["clientId"] for m in messages} == {"alice"}
    assert messages[2]["timestamp"] == served.clock() - 10
    assert messages[1]["timestamp"] == served.clock()

    forwards = served.history("room", headers, direction="forwards", limit=2).json()
    assert [m["name"] for m in forwards] == ["greet", "a"]
    window = served.history("room", headers, start=served.clock(), end=served.clock()).json()
    assert [m["name"] for m in window] == ["b", "a"]
    assert served.history("other", headers).json() == []


def test_channel_names_are_url_decoded(served: Served) -> None:
    headers = served.headers()
    assert served.publish("ns%3Achat%2Fa%20b", {"data": "x"}, headers).status_code == 201
    assert served.history("ns:chat%2Fa b", headers).json()[0]["data"] == "x"


def test_client_given_message_id_is_idempotent(served: Served) -> None:
    headers = served.headers()
    message = {"id": "fixed-id:0", "name": "n", "data": "d"}
    assert served.publish("room", message, headers).json()["serials"][0] is not None
    assert served.publish("room", message, headers).json()["serials"] == [None]
    assert len(served.history("room", headers).json()) == 1


def test_history_only_token_cannot_publish(served: Served) -> None:
    headers = served.headers(capability={"*": ["history"]})
    body = check_error(served.publish("room", {"data": "x"}, headers), 401, 40160)
    assert "publish" in body["message"]
    assert served.history("room", headers).status_code == 200


def test_publish_only_token_cannot_read_history(served: Served) -> None:
    headers = served.headers(capability={"room": ["publish"]})
    assert served.publish("room", {"data": "x"}, headers).status_code == 201
    check_error(served.history("room", headers), 401, 40160)
    check_error(served.publish("elsewhere", {"data": "x"}, headers), 401, 40160)


def test_no_credentials(served: Served) -> None:
    check_error(served.publish("room", {"data": "x"}, {}), 401, 40100)
    check_error(served.history("room", {"Authorization": "Bearer bm9wZQ=="}), 401, 40144)


# -- clientId ---------------------------------------------------------------------------


def test_client_id_from_token(served: Served) -> None:
    headers = served.headers(client_id="alice")
    assert served.publish("room", {"data": "x", "clientId": "alice"}, headers).status_code == 201
    body = check_error(
        served.publish("room", {"data": "x", "clientId": "bob"}, headers), 400, 40012
    )
    assert "bob" in body["message"]
    assert [m["clientId"] for m in served.history("room", headers).json()] == ["alice"]


def test_wildcard_token_may_publish_as_anyone(served: Served) -> None:
    headers = served.headers(client_id="*")
    batch = [{"data": "1", "clientId": "bob"}, {"data": "2"}]
    assert served.publish("room", batch, headers).status_code == 201
    messages = served.history("room", headers, direction="forwards").json()
    assert [m.get("clientId") for m in messages] == ["bob", None]


def test_x_ably_client_id_with_wildcard_token(served: Served) -> None:
    headers = served.headers(client_id="*")
    headers["X-Ably-ClientId"] = base64.b64encode(b"carol").decode()
    assert served.publish("room", {"data": "x"}, headers).status_code == 201
    assert served.history("room", headers).json()[0]["clientId"] == "carol"


def test_anonymous_token_may_not_claim_a_client_id(served: Served) -> None:
    headers = served.headers()
    check_error(served.publish("room", {"data": "x", "clientId": "bob"}, headers), 400, 40012)
    assert served.publish("room", {"data": "x"}, headers).status_code == 201
    assert "clientId" not in served.history("room", headers).json()[0]


def test_basic_key_auth_may_set_any_client_id(served: Served) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}
    assert served.publish("room", {"data": "x", "clientId": "dave"}, basic).status_code == 201
    assert served.history("room", basic).json()[0]["clientId"] == "dave"


# -- bad input: always a 4xx Ably error -------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", 40001),
        (b"", 40001),
        (b'"just a string"', 40013),
        (b"[]", 40013),
        (b"[1, 2]", 40013),
        (b'{"data": 5}', 40013),
        (b'{"data": true}', 40013),
        (b'{"name": 5, "data": "x"}', 40013),
        (b'{"data": "x", "id": ""}', 40013),
        (b'{"data": "x", "id": 7}', 40013),
        (b'{"data": "x", "encoding": ["a"]}', 40013),
        (b'{"data": "x", "extras": "no"}', 40013),
        (b'{"data": "x", "clientId": ""}', 40012),
        (b'{"data": "x", "clientId": 3}', 40012),
        (b"[" * 100_000 + b"]" * 100_000, 40009),
        (b'{"data": "' + b"x" * 70_000 + b'"}', 40009),
        (b"[" * 5000 + b"]" * 5000, 40001),
    ],
)
def test_bad_publish_bodies(served: Served, body: bytes, code: int) -> None:
    headers = {**served.headers(), "Content-Type": "application/json"}
    response = requests.post(f"{served.url}/channels/room/messages", data=body, headers=headers)
    assert 400 <= response.status_code < 500
    check_error(response, response.status_code, code)


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"\x91\x05", msgpack.packb({"data": msgpack.Timestamp(1)}), b"\x81\x01\x02"],
)
def test_bad_msgpack_bodies(served: Served, body: bytes) -> None:
    headers = {**served.headers(), "Content-Type": MSGPACK}
    response = requests.post(f"{served.url}/channels/room/messages", data=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["X-Ably-ErrorCode"] in ("40001", "40013")


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"direction": "sideways"},
        {"start": "x"},
        {"start": "10", "end": "5"},
    ],
)
def test_bad_history_parameters(served: Served, query: dict[str, str]) -> None:
    check_error(served.history("room", served.headers(), **query), 400, 40003)


def test_bad_channel_names(served: Served) -> None:
    headers = served.headers()
    check_error(served.publish("%20", {"data": "x"}, headers), 400, 40010)
    check_error(served.publish("a" * 256, {"data": "x"}, headers), 400, 40010)
    check_error(served.publish("bad%09name", {"data": "x"}, headers), 400, 40010)
    check_error(served.publish("bad%0Aname", {"data": "x"}, headers), 404, 40400)
    check_error(served.publish("", {"data": "x"}, headers), 404, 40400)


def test_unknown_route_and_method(served: Served) -> None:
    check_error(requests.get(served.url + "/nowhere"), 404, 40400)
    check_error(requests.delete(served.url + "/channels/room/messages"), 405, 40500)


# -- msgpack ------------------------------------------------------------------------------


def test_msgpack_round_trip(served: Served) -> None:
    headers = served.headers(client_id="alice")
    body = msgpack.packb(
        [{"name": "bin", "data": b"\x00\xffraw"}, {"name": "text", "data": "t", "encoding": None}],
        use_bin_type=True,
    )
    response = requests.post(
        f"{served.url}/channels/room/messages",
        data=body,
        headers={**headers, "Content-Type": MSGPACK, "Accept": MSGPACK},
    )
    assert response.status_code == 201
    assert response.headers["Content-Type"] == MSGPACK
    assert msgpack.unpackb(response.content)["channel"] == "room"

    packed = served.history("room", {**headers, "Accept": MSGPACK}, direction="forwards")
    assert packed.headers["Content-Type"] == MSGPACK
    messages = msgpack.unpackb(packed.content, raw=False)
    assert messages[0]["data"] == b"\x00\xffraw"
    assert "encoding" not in messages[0]
    assert messages[1]["data"] == "t"

    as_json = served.history("room", headers, direction="forwards").json()
    assert as_json[0]["encoding"] == "base64"
    assert base64.b64decode(as_json[0]["data"]) == b"\x00\xffraw"
    assert served.history("room", headers, format="msgpack").headers["Content-Type"] == MSGPACK


def test_json_base64_stays_as_sent(served: Served) -> None:
    headers = served.headers()
    message = {"data": base64.b64encode(b"\x01").decode(), "encoding": "utf-8/base64"}
    assert served.publish("room", message, headers).status_code == 201
    packed = msgpack.unpackb(served.history("room", {**headers, "Accept": MSGPACK}).content)
    assert packed[0]["encoding"] == "utf-8/base64"
    assert packed[0]["data"] == "AQ=="


# -- real ably-python as a client ---------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_ably_python_publish_and_history(served: Served, binary: bool) -> None:
    ably = pytest.importorskip("ably")
    port = int(served.url.rsplit(":", 1)[1])
    served.clock.ms = now_ms()  # ably-python signs with the wall clock

    async def run() -> list[Any]:
        options: dict[str, Any] = {
            "rest_host": "127.0.0.1",
            "port": port,
            "tls": False,
            "use_binary_protocol": binary,
        }
        keyed = ably.AblyRest(key=KEY, **options)
        details = await keyed.auth.request_token(
            token_params={"capability": {"*": ["*"]}, "client_id": "alice", "ttl": 60_000}
        )
        await keyed.close()
        rest = ably.AblyRest(token_details=details, **options)
        channel = rest.channels.get("room")
        await channel.publish("greet", "hello")
        await channel.publish("bin", b"\x00\x01")
        await channel.publish("obj", {"a": [1]})
        page = await channel.history()
        items = [(m.name, m.data, m.client_id) for m in page.items]
        await rest.close()
        return items

    items = asyncio.run(run())
    assert items == [
        ("obj", {"a": [1]}, "alice"),
        ("bin", b"\x00\x01", "alice"),
        ("greet", "hello", "alice"),
    ]


# -- configuration --------------------------------------------------------------------


def test_dev_key_matches_issuer_example() -> None:
    assert provider_app.DEV_PROVIDER_KEYS == [issuer_app.DEV_TOKENREQ_KEY]


def test_dev_defaults_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = settings(tmp_path)
    del config["TOKENREQ_PROVIDER_KEYS"], config["TOKENREQ_SIGNING_SECRET"]
    app = provider_app.create_app(config, instance_path=str(tmp_path / "i"))
    assert app.config["TOKENREQ_PROVIDER_KEYS"] == provider_app.DEV_PROVIDER_KEYS
    text = caplog.text
    assert "TOKENREQ_PROVIDER_KEYS is not set" in text
    assert "TOKENREQ_SIGNING_SECRET is not set" in text


def test_reads_tokenreq_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    for name, value in settings(tmp_path).items():
        if name.startswith("TOKENREQ_"):
            monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
    monkeypatch.setenv("TOKENREQ_PROVIDER_URL_PREFIX", "/ably")
    monkeypatch.setenv("TOKENREQ_MESSAGES_MAX_BYTES", "300")
    monkeypatch.setenv("FLASK_SECRET_KEY", "from-the-environment-0123456789abcdef")
    app = provider_app.create_app(instance_path=str(tmp_path / "i"), now_ms=clock)
    assert app.config["TOKENREQ_PROVIDER_KEYS"] == [KEY]
    assert app.config["SECRET_KEY"] == "from-the-environment-0123456789abcdef"
    with serve_app(app) as url:
        details = request_token(KEY, url + "/ably", timestamp=clock())
        assert details["keyName"] == KEY_NAME
        assert requests.get(url + "/ably/time").json() == [clock()]
        headers = {"Authorization": bearer(details["token"])}
        big = {"data": "x" * 400}
        response = requests.post(url + "/channels/room/messages", json=big, headers=headers)
        check_error(response, 413, 40009)


def test_cors_on_channel_routes(tmp_path: Path, clock: FakeClock) -> None:
    origin = "https://app.example"
    config = settings(tmp_path, TOKENREQ_PROVIDER_CORS_ORIGINS=[origin])
    app = provider_app.create_app(config, instance_path=str(tmp_path / "i"), now_ms=clock)
    with serve_app(app) as url:
        preflight = requests.options(
            url + "/channels/room/messages",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"]
        denied = requests.get(url + "/channels/room/messages", headers={"Origin": origin})
        assert denied.headers["Access-Control-Allow-Origin"] == origin
        other = requests.options(
            url + "/channels/room/messages", headers={"Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in other.headers
