"""One TokenRequest, many concurrent copies: accepted exactly once, across processes.

``examples.provider_app:create_app()`` runs under gunicorn with 4 worker
processes, configured only through ``TOKENREQ_*`` environment variables. For
each shared nonce store (an SQLite file, PostgreSQL, Redis) 100 copies of one
signed TokenRequest are fired at once: exactly one is exchanged, the other 99
are refused with 401/40105. With ``memory://`` each worker keeps its own
nonces, so up to one copy per worker can be accepted: only that bound is
asserted. The same servers also exchange a TokenRequest made by real
ably-python (spaced capability JSON, every key present with nulls).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from examples import provider_app
from flask_tokenreq import sign_token_request
from flask_tokenreq.client import bearer
from flask_tokenreq.stores.redis import REDIS_KEY_PREFIX
from flask_tokenreq.stores.sql import nonces_table

from . import servers
from .conftest import SECRET
from .servers import run_gunicorn, serve_app

APP_SPEC = "examples.provider_app:create_app()"
WORKERS = 4
COPIES = 100
SIGNING_SECRET = "replay-test-signing-secret-0123456789abcdef"

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@dataclass
class Server:
    url: str
    key: str
    store: str

    @property
    def key_name(self) -> str:
        return self.key.partition(":")[0]


def fire(url: str, body: dict[str, Any], copies: int, threads: int) -> list[tuple[int, str]]:
    """POST ``body`` ``copies`` times, released together; (status, X-Ably-ErrorCode) each."""
    assert copies <= threads, "one thread per copy, so the barrier releases them all at once"
    responses = servers.fire(
        "POST",
        url,
        copies,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return [(r.status_code, r.headers.get("X-Ably-ErrorCode", "")) for r in responses]


def exchange_url(server: Server, key_name: str | None = None) -> str:
    return f"{server.url}/keys/{key_name or server.key_name}/requestToken"


def store_env(store: str, tmp: Path) -> dict[str, str]:
    key = f"replay.{uuid.uuid4().hex[:12]}:{SECRET}"
    return {
        "TOKENREQ_PROVIDER_KEYS": json.dumps([key]),
        "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
        "TOKENREQ_NONCE_STORE": store,
        "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp / 'messages.sqlite3'}",
        "FLASK_SECRET_KEY": "replay-test-session-key-0123456789abcdef",
    }


STORES = ["sqlite", "postgres", "redis"]


@pytest.fixture(scope="module", params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('nonces') / 'nonces.sqlite3'}"
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(scope="module")
def server(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = store_env(store_url, tmp_path_factory.mktemp("gunicorn"))
    key = json.loads(env["TOKENREQ_PROVIDER_KEYS"])[0]
    with run_gunicorn(APP_SPEC, env, workers=WORKERS, ready_path="/time") as running:
        yield Server(running.url, key, store_url)
    forget_nonces(store_url, key.partition(":")[0])


def forget_nonces(store: str, key_name: str) -> None:
    """Remove this run's nonces from a shared PostgreSQL or Redis store."""
    if store.startswith("redis"):
        import redis

        client = redis.Redis.from_url(store)
        keys = list(client.scan_iter(match=f"{REDIS_KEY_PREFIX}{key_name}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    elif store.startswith("postgresql"):
        engine = sa.create_engine(store)
        with engine.begin() as conn:
            conn.execute(nonces_table.delete().where(nonces_table.c.key_name == key_name))
        engine.dispose()


def test_one_of_100_copies_is_accepted(server: Server) -> None:
    treq = sign_token_request(server.key, client_id="alice")
    results = fire(exchange_url(server), treq.to_dict(), COPIES, threads=COPIES)
    accepted = [r for r in results if r[0] == 200]
    assert len(accepted) == 1, results
    assert sorted(set(results) - set(accepted)) == [(401, "40105")]
    assert len(results) == COPIES


def test_ably_python_token_request_is_exchanged(server: Server) -> None:
    ably = pytest.importorskip("ably")

    async def create() -> dict[str, Any]:
        rest = ably.AblyRest(key=server.key)
        treq = await rest.auth.create_token_request(
            token_params={"capability": {"*": ["*"]}, "client_id": "alice", "ttl": 60_000}
        )
        await rest.close()
        wire: dict[str, Any] = treq.to_dict()
        return wire

    wire = asyncio.run(create())
    assert wire["capability"] == '{"*": ["*"]}'  # ably-python's spaced form, as signed
    anonymous = asyncio.run(_ably_python_anonymous(ably, server.key))
    assert anonymous["clientId"] is None  # every key present, nulls included
    expected = [
        ("alice", '{"*":["*"]}'),
        (None, '{"*":["subscribe"],"room":["history","publish"]}'),
    ]
    for body, (client_id, capability) in zip((wire, anonymous), expected, strict=True):
        response = requests.post(exchange_url(server), json=body, timeout=10)
        assert response.status_code == 200, response.text
        details = response.json()
        assert details["keyName"] == server.key_name
        assert details.get("clientId") == client_id
        assert details["capability"] == capability
    again = requests.post(exchange_url(server), json=wire, timeout=10)
    assert again.headers["X-Ably-ErrorCode"] == "40105"


async def _ably_python_anonymous(ably: Any, key: str) -> dict[str, Any]:
    rest = ably.AblyRest(key=key)
    treq = await rest.auth.create_token_request(
        token_params={"capability": {"room": ["publish", "history"], "*": ["subscribe"]}}
    )
    await rest.close()
    wire: dict[str, Any] = treq.to_dict()
    return wire


def test_ably_python_request_token_over_http(server: Server) -> None:
    """ably-python's own ``request_token``: it signs and POSTs (JSON and msgpack)."""
    ably = pytest.importorskip("ably")
    host, port = server.url.removeprefix("http://").split(":")

    async def run(binary: bool) -> Any:
        rest = ably.AblyRest(
            key=server.key, rest_host=host, port=int(port), tls=False, use_binary_protocol=binary
        )
        details = await rest.auth.request_token(
            token_params={"capability": {"*": ["*"]}, "client_id": "alice"}
        )
        await rest.close()
        return details

    for binary in (False, True):
        details = asyncio.run(run(binary))
        assert details.client_id == "alice"
        headers = {"Authorization": bearer(details.token)}
        published = requests.post(
            f"{server.url}/channels/room/messages", json={"data": "x"}, headers=headers
        )
        assert published.status_code == 201, published.text


def test_memory_store_is_per_process(tmp_path: Path) -> None:
    env = store_env("memory://", tmp_path)
    key = json.loads(env["TOKENREQ_PROVIDER_KEYS"])[0]
    with run_gunicorn(APP_SPEC, env, workers=WORKERS, ready_path="/time") as running:
        server = Server(running.url, key, "memory://")
        treq = sign_token_request(key)
        results = fire(exchange_url(server), treq.to_dict(), COPIES, threads=COPIES)
    accepted = sum(1 for status, _ in results if status == 200)
    # Each worker process accepts a nonce at most once; which workers see a
    # copy is up to the kernel, so only the bounds are certain.
    assert 1 <= accepted <= WORKERS, results
    assert sorted(set(results) - {(200, "")}) == [(401, "40105")]


@pytest.mark.parametrize("kind", STORES)
def test_32_threads_one_process(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if kind == "sqlite":
        store = f"sqlite:///{tmp_path / 'nonces.sqlite3'}"
    else:
        store = str(request.getfixturevalue("postgres_url" if kind == "postgres" else "redis_url"))
    env = store_env(store, tmp_path)
    config: dict[str, Any] = {k: v for k, v in env.items() if k.startswith("TOKENREQ_")}
    config["TOKENREQ_PROVIDER_KEYS"] = json.loads(config["TOKENREQ_PROVIDER_KEYS"])
    app = provider_app.create_app(config, instance_path=str(tmp_path / "instance"))
    key = config["TOKENREQ_PROVIDER_KEYS"][0]
    treq = sign_token_request(key)
    with serve_app(app) as url:
        server = Server(url, key, store)
        results = fire(exchange_url(server), treq.to_dict(), 32, threads=32)
    assert sorted(results).count((200, "")) == 1, results
    assert sorted(set(results) - {(200, "")}) == [(401, "40105")]
    app.extensions["tokenreq_provider"].close()
    forget_nonces(store, key.partition(":")[0])
