"""Managed keys through the provider's HTTP endpoints, on real SQLite files and PostgreSQL.

Each :class:`Worker` is a provider app of its own on the same database, as a
gunicorn worker or another host would be; they share only the database and
an injected clock. Wacht's checklist over HTTP (rotate: the old secret is
refused; revoke: immediate), grace and expiry on the injected clock,
``POST /keys/<keyName>/revokeTokens`` (Ably's shapes, its authentication,
millisecond precision), static keys beside managed ones, one key
authentication for ``Basic`` and ``Bearer`` keys, the audit rows of
exchanges, and failing closed when the database is down.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import msgpack
import pytest
import sqlalchemy as sa
from flask import Flask, g
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_tokenreq import models, sign_token_request, signals
from flask_tokenreq.audit import AuditEvent
from flask_tokenreq.errors import ConfigError, Conflict, StoreUnavailable
from flask_tokenreq.keys import parse_key
from flask_tokenreq.keys.chain import KeyChain
from flask_tokenreq.keys.secret import format_secret
from flask_tokenreq.keys.sql import REAUTH_MARGIN_MS, SqlKeyStore
from flask_tokenreq.provider import TokenProvider
from flask_tokenreq.stores import MemoryNonceStore
from tests.conftest import KEY, KEY_NAME, SECRET, FakeClock
from tests.dbs import FERNET_1, FERNET_OTHER, TcpProxy, db_url, pg_schema

__all__ = ["db_url", "pg_schema"]  # fixtures used by name

SIGNING_SECRET = "keys-provider-signing-secret-0123456789abcdef"
#: The clock starts on a whole second, so tests can place events inside one.
START = 1_700_000_000_000


#: A managed key's secret (or a long piece of one) anywhere in an answer is a leak.
SECRET_LIKE = re.compile(rb"tkr_[A-Za-z0-9_-]{8}")


class CheckedClient(FlaskClient):
    """A test client that fails the test when an answer shows a managed key's secret."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        assert not SECRET_LIKE.search(response.get_data())
        assert not SECRET_LIKE.search(str(response.headers).encode())
        return response


class Worker:
    """One provider app on the shared database (a gunicorn worker, or another host)."""

    def __init__(self, app: Flask, provider: TokenProvider) -> None:
        self.app = app
        self.provider = provider
        app.test_client_class = CheckedClient
        self.client: FlaskClient = app.test_client()

    @property
    def keys(self) -> KeyChain:
        with self.app.app_context():
            return self.provider.keys

    @property
    def store(self) -> SqlKeyStore:
        return self.keys.for_change()

    def exchange(self, key: str, **params: Any) -> TestResponse:
        treq = sign_token_request(key, timestamp=self.provider_now(), **params)
        return self.client.post(
            f"/keys/{treq.key_name}/requestToken",
            data=treq.to_json(),
            headers={"Content-Type": "application/json"},
        )

    def token(self, key: str, **params: Any) -> str:
        response = self.exchange(key, **params)
        assert response.status_code == 200, response.get_json()
        token: str = response.get_json()["token"]
        return token

    def provider_now(self) -> int:
        with self.app.app_context():
            return self.provider._state().now()

    def get(self, authorization: str, path: str = "/rooms/lobby") -> TestResponse:
        return self.client.get(path, headers={"Authorization": authorization})

    def revoke_tokens(
        self, key: str, body: Any, *, key_name: str | None = None, **headers: str
    ) -> TestResponse:
        name = key_name or key.partition(":")[0]
        return self.client.post(
            f"/keys/{name}/revokeTokens",
            data=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": basic(key), **headers},
        )


def mistyped(key: str) -> str:
    """``key`` with its last character changed (its tkr_ checksum then fails)."""
    return key[:-1] + ("x" if key[-1] != "x" else "y")


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(key.encode()).decode()


def bearer(token: str) -> str:
    return "Bearer " + base64.b64encode(token.encode()).decode()


def error_of(response: TestResponse, status: int, code: int) -> str:
    """The Ably error's message, after checking its status, code and headers."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["X-Ably-ErrorCode"] == str(code)
    body = response.get_json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


MakeWorker = Callable[..., Worker]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def make_worker(db_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[MakeWorker]:
    made: list[Worker] = []

    def make(**config: Any) -> Worker:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config.update(
            TESTING=True,
            TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
            TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
            TOKENREQ_DATABASE_URL=db_url,
        )
        app.config.update(config)
        provider = TokenProvider(
            app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock
        )

        @app.get("/rooms/<room>")
        @provider.require("subscribe", "{room}")
        def room(room: str) -> dict[str, Any]:
            return {"keyName": g.tokenreq.key_name, "kind": g.tokenreq.kind}

        worker = Worker(app, provider)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.provider.close()


@pytest.fixture
def worker(make_worker: MakeWorker) -> Worker:
    return make_worker()


@pytest.fixture
def worker2(make_worker: MakeWorker, worker: Worker) -> Worker:
    return make_worker()


def audit_rows(worker: Worker) -> list[dict[str, Any]]:
    with worker.app.app_context():
        audit = worker.provider.audit
        assert audit is not None
        assert audit.flush()
    with worker.store.database.engine.connect() as conn:
        rows = conn.execute(sa.select(models.audit).order_by(models.audit.c.id)).mappings()
        return [dict(r) for r in rows]


# -- the happy path ----------------------------------------------------------------------


def test_a_managed_key_exchanges_guards_and_authenticates(
    worker: Worker, worker2: Worker, clock: FakeClock
) -> None:
    key, full = worker.store.create("CI Key", {"lobby": ["subscribe"]})
    token = worker2.token(full, client_id="alice")
    assert worker2.get(bearer(token)).get_json() == {"keyName": key.key_name, "kind": "token"}
    assert worker2.get(basic(full)).get_json()["kind"] == "basic"
    # Server to server: the managed key itself as the bearer value (Trivial's client keys).
    assert worker2.get(f"Bearer {full}").get_json() == {"keyName": key.key_name, "kind": "basic"}
    error_of(worker2.get(basic(full), "/rooms/elsewhere"), 401, 40160)
    info = worker.store.describe(key.key_name)
    assert info is not None
    assert info.last_used_ms == clock()


def test_no_keys_at_all_is_a_config_error_naming_both_settings(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET)
    with pytest.raises(ConfigError) as info:
        TokenProvider(app, nonces=MemoryNonceStore(warn=False))
    assert "TOKENREQ_PROVIDER_KEYS" in str(info.value)
    assert "TOKENREQ_KEY_ENCRYPTION_KEYS" in str(info.value)


def test_an_empty_static_list_with_managed_keys_is_a_managed_only_provider(
    make_worker: MakeWorker,
) -> None:
    """``TOKENREQ_PROVIDER_KEYS=[]`` is "no static keys": refused alone, fine with managed keys."""
    worker = make_worker(TOKENREQ_PROVIDER_KEYS=[])
    _, full = worker.store.create("k")
    assert worker.token(full)


def test_a_password_in_the_database_url_query_is_never_shown(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq takes ``?password=`` too: log lines and errors hide it like ``user:password@``."""
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
        # Port 1: nothing listens, the database is down from the start.
        TOKENREQ_DATABASE_URL="postgresql://postgres@127.0.0.1:1/test?password=hunter2",
    )
    caplog.set_level(logging.INFO, logger="flask_tokenreq")
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    with app.app_context():
        shown = repr(provider.keys)
        with pytest.raises(StoreUnavailable) as info:
            provider.keys.get("tokenreq.k")
    exchange = Worker(app, provider).exchange(f"tokenreq.k:{format_secret(bytes(32))}")
    message = error_of(exchange, 503, 50003)
    provider.close()
    assert "127.0.0.1:1" in caplog.text  # the URL is logged, without its password
    assert "hunter2" not in caplog.text + shown + str(info.value) + message


def test_the_default_database_is_a_sqlite_file_in_the_instance_folder(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1]
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(warn=False), now_ms=clock)
    with app.app_context():
        assert provider.keys.for_change().database.url.endswith("/instance/tokenreq.sqlite3")
    assert (tmp_path / "instance" / "tokenreq.sqlite3").is_file()
    provider.close()


def test_static_keys_alone_use_no_database(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY])
    provider = TokenProvider(app, nonces=MemoryNonceStore(warn=False))
    with app.app_context():
        assert provider.audit is None
        assert provider.keys.managed is None
        with pytest.raises(Conflict):
            provider.keys.for_change()
    assert not (tmp_path / "instance").exists()


# -- rotate (Wacht: "rotate returns new secret and old secret is rejected") --------------


def test_rotate_refuses_the_old_secret_on_every_worker_at_once(
    worker: Worker, worker2: Worker
) -> None:
    key, old = worker.store.create("k")
    before = worker2.token(old)
    assert worker2.get(basic(old)).status_code == 200  # worker 2 has used the old secret
    new = worker.store.rotate(key.key_name)
    for w in (worker, worker2):
        error_of(w.exchange(old), 401, 40101)
        error_of(w.get(basic(old)), 401, 40101)
        error_of(w.get(f"Bearer {old}"), 401, 40101)
        assert w.exchange(new).status_code == 200
        assert w.get(basic(new)).status_code == 200
        # Rotation is not revocation: tokens issued before it stay valid.
        assert w.get(bearer(before)).status_code == 200


def test_rotation_grace_ends_on_the_injected_clock(
    worker: Worker, worker2: Worker, clock: FakeClock
) -> None:
    key, old = worker.store.create("k")
    new = worker.store.rotate(key.key_name, grace_ms=60_000)
    clock.advance(60_000)  # the last millisecond of the grace period
    assert worker2.exchange(old).status_code == 200
    assert worker2.get(basic(old)).status_code == 200
    clock.advance(1)
    error_of(worker2.exchange(old), 401, 40101)
    error_of(worker2.get(basic(old)), 401, 40101)
    assert worker2.exchange(new).status_code == 200


# -- revoke (Wacht: "revoke removes active status immediately") and expiry ---------------


def test_revoke_bites_at_once_on_every_worker(worker: Worker, worker2: Worker) -> None:
    key, full = worker.store.create("k")
    token = worker2.token(full)
    assert worker2.get(bearer(token)).status_code == 200  # worker 2's cache is warm
    worker.store.revoke(key.key_name, "leaked in a log")
    assert "revoked" in error_of(worker2.exchange(full), 401, 40131)
    error_of(worker2.get(basic(full)), 401, 40131)
    error_of(worker2.get(f"Bearer {full}"), 401, 40131)
    error_of(worker2.get(bearer(token)), 401, 40141)
    error_of(worker.get(bearer(token)), 401, 40141)


def test_an_expired_key_acts_as_revoked_with_40132(
    worker: Worker, worker2: Worker, clock: FakeClock
) -> None:
    _, full = worker.store.create("k", expires_ms=clock() + 10_000)
    token = worker2.token(full, ttl=3_600_000)
    assert worker2.get(bearer(token)).status_code == 200
    clock.advance(10_000)
    error_of(worker2.exchange(full), 401, 40132)
    error_of(worker2.get(basic(full)), 401, 40132)
    error_of(worker2.get(bearer(token)), 401, 40132)


# -- one key authentication: Basic and Bearer keys, static and managed -------------------


def test_a_mistyped_tkr_secret_is_refused_before_any_lookup(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")  # the database file cannot be opened
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
        TOKENREQ_DATABASE_URL=f"sqlite:///{blocker / 'keys.sqlite3'}",
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(warn=False))
    client = app.test_client()

    @app.get("/whoami")
    @provider.require()
    def whoami() -> str:
        return "ok"

    good = "tokenreq.Ab12Cd34:" + format_secret(bytes(range(32)))
    typo = good[:-9] + ("x" if good[-9] != "x" else "y") + good[-8:]
    for authorization in (basic(typo), f"Bearer {typo}"):
        response = client.get("/whoami", headers={"Authorization": authorization})
        assert "key is malformed" in error_of(response, 401, 40101)
        assert typo.partition(":")[2] not in response.get_data(as_text=True)
    # A character no key holds (NUL passes some WSGI servers): 401, not a 500.
    nul = f"Bearer {good[:-4]}\x00{good[-3:]}"
    for response in (
        client.get("/whoami", environ_overrides={"HTTP_AUTHORIZATION": nul}),
        client.post(
            "/keys/tokenreq.Ab12Cd34/revokeTokens",
            json={"targets": ["clientId:a"]},
            environ_overrides={"HTTP_AUTHORIZATION": nul},
        ),
    ):
        assert "key is malformed" in error_of(response, 401, 40101)
    # A well-formed key needs the database, which is down: 503, never accepted.
    error_of(client.get("/whoami", headers={"Authorization": basic(good)}), 503, 50003)
    provider.close()


def test_static_and_managed_keys_together(
    make_worker: MakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(TOKENREQ_PROVIDER_KEYS=[KEY])
    _, full = worker.store.create("managed")
    for key in (KEY, full):
        assert worker.get(bearer(worker.token(key))).status_code == 200
        assert worker.get(basic(key)).status_code == 200
    assert worker.get(f"Bearer {KEY}").status_code == 401  # not a managed key: a bad token
    # A static key comes from configuration: it cannot be changed here.
    with pytest.raises(Conflict) as info:
        worker.keys.for_change(KEY_NAME)
    assert info.value.code == 40900
    assert "configuration" in info.value.message
    message = error_of(worker.revoke_tokens(KEY, {"targets": ["clientId:a"]}), 409, 40900)
    assert "TOKENREQ_PROVIDER_KEYS" in message


def test_a_managed_key_never_shadows_a_static_one(
    make_worker: MakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker()
    key, full = worker.store.create("managed")
    # Later, a static key gets the same name (a configuration mistake): it wins.
    static_key = f"{key.key_name}:{SECRET}"
    with caplog.at_level(logging.WARNING):
        both = make_worker(TOKENREQ_PROVIDER_KEYS=[static_key])
    assert f"managed key {key.key_name} is hidden" in caplog.text
    assert both.get(basic(static_key)).status_code == 200
    error_of(both.get(basic(full)), 401, 40101)
    # New managed names avoid the static ones.
    taken = SqlKeyStore(worker.store.database.engine, [FERNET_1], reserved=lambda name: True)
    with pytest.raises(StoreUnavailable):
        taken.create("never")


def test_keys_argument_takes_a_key_chain(db_url: str, clock: FakeClock, tmp_path: Path) -> None:
    store = SqlKeyStore(db_url, [FERNET_1], now_ms=clock, app_id="own")
    app = Flask(__name__)
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET)
    provider = TokenProvider(
        app, keys=KeyChain(None, store), nonces=MemoryNonceStore(warn=False), now_ms=clock
    )
    key, full = store.create("mine")
    assert key.key_name.startswith("own.")
    treq = sign_token_request(full, timestamp=clock())
    response = app.test_client().post(f"/keys/{key.key_name}/requestToken", json=treq.to_dict())
    assert response.status_code == 200
    provider.close()
    store.close()


# -- POST /keys/<keyName>/revokeTokens (DESIGN §7a) --------------------------------------


def test_revoke_tokens_by_client_id_bites_on_every_worker(
    worker: Worker, worker2: Worker, clock: FakeClock
) -> None:
    _key, full = worker.store.create("k")
    alice, bob = worker2.token(full, client_id="alice"), worker2.token(full, client_id="bob")
    assert worker2.get(bearer(alice)).status_code == 200
    clock.advance(1)
    response = worker.revoke_tokens(full, {"targets": ["clientId:alice", "channel:x"]})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.get_json() == {
        "successCount": 1,
        "failureCount": 1,
        "results": [
            {"target": "clientId:alice", "issuedBefore": clock(), "appliesAt": clock()},
            {"target": "channel:x", "error": response.get_json()["results"][1]["error"]},
        ],
    }
    assert response.get_json()["results"][1]["error"]["code"] == 40003
    error_of(worker2.get(bearer(alice)), 401, 40141)
    assert worker2.get(bearer(bob)).status_code == 200
    assert worker2.get(bearer(worker2.token(full, client_id="alice"))).status_code == 200


def test_a_token_issued_in_the_same_second_after_the_revocation_works(
    worker: Worker, clock: FakeClock
) -> None:
    """``iat`` has whole seconds, ``issuedBefore`` milliseconds: the ``issued`` claim decides."""
    _, full = worker.store.create("k")
    clock.advance(200)
    earlier = worker.token(full, client_id="alice")
    clock.advance(300)  # START + 500: the revocation
    assert worker.revoke_tokens(full, {"targets": ["clientId:alice"]}).status_code == 200
    clock.advance(200)  # START + 700: same second, after it
    later = worker.token(full, client_id="alice")
    assert jwt.decode(later, options={"verify_signature": False})["iat"] * 1000 == START
    error_of(worker.get(bearer(earlier)), 401, 40141)
    assert worker.get(bearer(later)).status_code == 200


def ably_jwt(full: str, clock: FakeClock, **claims: Any) -> str:
    key_name, secret = parse_key(full)
    payload = {
        "iat": clock() // 1000,
        "exp": clock() // 1000 + 3600,
        "x-ably-capability": '{"*":["*"]}',
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": key_name, "typ": "JWT"})


def test_ably_jwts_are_compared_conservatively_and_match_revocation_keys(
    worker: Worker, clock: FakeClock
) -> None:
    _, full = worker.store.create("k")
    clock.advance(200)
    by_alice = ably_jwt(full, clock, **{"x-ably-clientId": "alice"})
    session = ably_jwt(full, clock, **{"x-ably-revocation-key": "session-7"})
    assert worker.get(bearer(by_alice)).status_code == 200
    clock.advance(300)
    body = {"targets": ["clientId:alice", "revocationKey:session-7"]}
    assert worker.revoke_tokens(full, body).get_json()["successCount"] == 2
    clock.advance(200)
    # Issued after the revocation but in its second: an Ably JWT only says the
    # second (iat), so it counts as issued at its start, and is refused.
    same_second = ably_jwt(full, clock, **{"x-ably-clientId": "alice"})
    for token in (by_alice, session, same_second):
        error_of(worker.get(bearer(token)), 401, 40141)
    clock.advance(300)  # the next second
    assert (
        worker.get(bearer(ably_jwt(full, clock, **{"x-ably-clientId": "alice"}))).status_code == 200
    )


def test_revoke_tokens_with_the_reauth_margin_and_issued_before(
    worker: Worker, clock: FakeClock
) -> None:
    _, full = worker.store.create("k")
    token = worker.token(full, client_id="alice")
    clock.advance(1000)
    body = {"targets": ["clientId:alice"], "allowReauthMargin": True, "issuedBefore": None}
    [result] = worker.revoke_tokens(full, body).get_json()["results"]
    assert result["appliesAt"] == clock() + REAUTH_MARGIN_MS
    assert worker.get(bearer(token)).status_code == 200  # not yet
    clock.advance(REAUTH_MARGIN_MS)
    error_of(worker.get(bearer(token)), 401, 40141)
    other = worker.token(full, client_id="bob")
    clock.advance(1000)
    body = {"targets": ["clientId:bob"], "issuedBefore": clock() - 2000}
    assert worker.revoke_tokens(full, body).status_code == 200
    assert worker.get(bearer(other)).status_code == 200  # issued after issuedBefore


def test_revoke_tokens_in_msgpack(worker: Worker, clock: FakeClock) -> None:
    """What ably-js in Node sends by default: msgpack both ways."""
    _, full = worker.store.create("k")
    token = worker.token(full, client_id="alice")
    clock.advance(1)
    key_name = full.partition(":")[0]
    response = worker.client.post(
        f"/keys/{key_name}/revokeTokens",
        data=msgpack.packb({"targets": ["clientId:alice"]}),
        headers={
            "Content-Type": "application/x-msgpack",
            "Accept": "application/x-msgpack",
            "Authorization": basic(full),
        },
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-msgpack"
    assert msgpack.unpackb(response.get_data())["successCount"] == 1
    error_of(worker.get(bearer(token)), 401, 40141)


def test_revoke_tokens_needs_the_key_it_names(worker: Worker) -> None:
    key, full = worker.store.create("k")
    _, other = worker.store.create("other")
    token = worker.token(full)
    body = json.dumps({"targets": ["clientId:a"]})
    path = f"/keys/{key.key_name}/revokeTokens"
    client = worker.client

    def post(authorization: str | None) -> TestResponse:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        return client.post(path, data=body, headers=headers)

    error_of(post(None), 401, 40100)
    error_of(post(bearer(token)), 401, 40162)
    error_of(post(basic(other)), 401, 40101)
    error_of(post(basic(mistyped(full))), 401, 40101)
    assert post(f"Bearer {full}").status_code == 200  # the managed key as bearer value
    error_of(client.get(path, headers={"Authorization": basic(full)}), 405, 40500)
    worker.store.revoke(key.key_name, "done")
    error_of(post(basic(full)), 401, 40131)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", 40001),
        ([], 40001),
        ({}, 40003),
        ({"targets": "clientId:a"}, 40003),
        ({"targets": {"clientId:a": 1}}, 40003),  # an object: list() would take its keys
        ({"targets": []}, 40003),
        ({"targets": [f"clientId:{i}" for i in range(101)]}, 40003),
        ({"targets": ["clientId:a"], "issuedBefore": "now"}, 40003),
        ({"targets": ["clientId:a"], "issuedBefore": START + 60_000}, 40003),
        ({"targets": ["clientId:a"], "allowReauthMargin": "yes"}, 40003),
    ],
)
def test_revoke_tokens_refuses_bad_bodies(worker: Worker, body: Any, code: int) -> None:
    _, full = worker.store.create("k")
    key_name = full.partition(":")[0]
    data = body if isinstance(body, str) else json.dumps(body)
    response = worker.client.post(
        f"/keys/{key_name}/revokeTokens",
        data=data,
        headers={"Content-Type": "application/json", "Authorization": basic(full)},
    )
    error_of(response, 400, code)
    with worker.store.database.engine.connect() as conn:
        assert conn.execute(sa.select(models.token_revocations)).first() is None


@pytest.mark.parametrize("accept", ["application/json", "application/x-msgpack"])
def test_revoke_tokens_answers_unstorable_targets_with_their_own_error(
    worker: Worker, clock: FakeClock, accept: str
) -> None:
    """A lone surrogate or a NUL gets an error entry whose target can be rendered;
    the valid targets of the same call apply."""
    _, full = worker.store.create("k")
    token = worker.token(full, client_id="alice")
    clock.advance(1)
    body = {"targets": ["clientId:\ud800", "clientId:a\x00b", "clientId:alice"]}
    response = worker.revoke_tokens(full, body, Accept=accept)
    assert response.status_code == 200
    result = (
        response.get_json()
        if accept == "application/json"
        else msgpack.unpackb(response.get_data())
    )
    assert (result["successCount"], result["failureCount"]) == (1, 2)
    bad_surrogate, bad_nul, ok = result["results"]
    assert bad_surrogate["target"] == "clientId:\\ud800"  # escaped, so it can be encoded
    assert bad_nul["target"] == "clientId:a\x00b"
    for entry in (bad_surrogate, bad_nul):
        assert entry["error"]["code"] == 40003
        assert "Unicode" in entry["error"]["message"]
    assert ok == {"target": "clientId:alice", "issuedBefore": clock(), "appliesAt": clock()}
    error_of(worker.get(bearer(token)), 401, 40141)


# -- the audit log of exchanges ----------------------------------------------------------


def test_exchanges_are_audited_without_secrets(
    worker: Worker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[AuditEvent] = []

    def receiver(sender: Any, event: AuditEvent, **extra: Any) -> None:
        got.append(event)

    signals.audit_event.connect(receiver)
    try:
        key, full = worker.store.create("k")
        treq = sign_token_request(full, client_id="alice", timestamp=clock())
        with caplog.at_level(logging.DEBUG):
            path = f"/keys/{key.key_name}/requestToken"
            headers = {"X-Request-Id": "req-42"}
            issued = worker.client.post(path, json=treq.to_dict(), headers=headers)
            replayed = worker.client.post(path, json=treq.to_dict())
    finally:
        signals.audit_event.disconnect(receiver)
    assert issued.status_code == 200
    error_of(replayed, 401, 40105)
    rows = [r for r in audit_rows(worker) if r["event"].startswith("token.")]
    assert [(r["event"], r["key_name"], r["client_id"], r["code"]) for r in rows] == [
        ("token.issued", key.key_name, "alice", None),
        ("token.refused", key.key_name, "alice", 40105),
    ]
    assert rows[0]["request_id"] == "req-42"
    assert rows[0]["remote_addr"] == "127.0.0.1"
    assert (
        rows[0]["detail"]["jti"]
        == jwt.decode(issued.get_json()["token"], options={"verify_signature": False})["jti"]
    )
    assert [e.event for e in got][-2:] == ["token.issued", "token.refused"]
    # The log lines of the exchange are still written (and hold no secret either).
    assert len([r for r in caplog.records if r.name == "flask_tokenreq.audit"]) == 2
    _, secret = parse_key(full)
    text = json.dumps(audit_rows(worker), default=str) + caplog.text
    for value in (secret, treq.mac, issued.get_json()["token"], SIGNING_SECRET, FERNET_1):
        assert value not in text


def test_audit_off_writes_no_rows(make_worker: MakeWorker, clock: FakeClock) -> None:
    worker = make_worker(TOKENREQ_AUDIT=False)
    _, full = worker.store.create("k")
    worker.token(full)
    assert audit_rows(worker) == []


def test_static_keys_with_a_database_url_audit_their_exchanges(
    db_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=[KEY],
        TOKENREQ_DATABASE_URL=db_url,
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    treq = sign_token_request(KEY, timestamp=clock())
    assert (
        app.test_client().post(f"/keys/{KEY_NAME}/requestToken", json=treq.to_dict()).status_code
        == 200
    )
    with app.app_context():
        audit = provider.audit
        assert audit is not None
        assert provider.keys.managed is None
        assert audit.flush()
        assert [e.event for e in audit.query()] == ["token.issued"]
    provider.close()


def test_a_full_key_sent_as_the_key_name_is_audited_without_its_secret(
    make_worker: MakeWorker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``POST /keys/appId.keyId:secret/requestToken``: a static secret matches no secret
    pattern, but a key name never holds a ``:``."""
    worker = make_worker(TOKENREQ_PROVIDER_KEYS=[KEY])
    body = {"keyName": KEY, "timestamp": clock(), "nonce": "n" * 20, "mac": "x" * 44}
    response = worker.client.post(f"/keys/{KEY}/requestToken", json=body)
    error_of(response, 401, 40101)
    [row] = [r for r in audit_rows(worker) if r["event"] == "token.refused"]
    assert row["key_name"] == f"{KEY_NAME}:[redacted]"
    assert row["detail"] == {"reason": f"No key named '{KEY_NAME}:[redacted]' is known"}
    assert SECRET not in json.dumps(audit_rows(worker)) + caplog.text


# -- failing closed ----------------------------------------------------------------------


def test_wrong_encryption_key_is_a_config_error_at_init_app(
    worker: Worker, make_worker: MakeWorker
) -> None:
    worker.store.create("k")
    with pytest.raises(ConfigError) as info:
        make_worker(TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_OTHER])
    assert "TOKENREQ_KEY_ENCRYPTION_KEYS" in str(info.value)
    assert FERNET_OTHER not in str(info.value)
    assert FERNET_1 not in str(info.value)


def test_a_database_down_at_start_fails_closed_until_it_is_back(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "db"
    folder.write_text("a file where the database folder should be")
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
        TOKENREQ_DATABASE_URL=f"sqlite:///{folder / 'keys.sqlite3'}",
        TOKENREQ_PROVIDER_KEYS=[KEY],
    )
    with caplog.at_level(logging.WARNING):
        provider = TokenProvider(
            app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock
        )
    assert "unavailable at start" in caplog.text

    @app.get("/whoami")
    @provider.require()
    def whoami() -> str:
        return "ok"

    worker = Worker(app, provider)
    full = "tokenreq.Ab12Cd34:" + format_secret(bytes(32))
    error_of(worker.exchange(full), 503, 50003)
    error_of(worker.get(basic(full), "/whoami"), 503, 50003)
    error_of(worker.revoke_tokens(full, {"targets": ["clientId:a"]}), 503, 50003)
    assert worker.exchange(KEY).status_code == 200  # static keys need no database
    folder.unlink()
    folder.mkdir()
    _, full = worker.store.create("after")
    assert worker.exchange(full).status_code == 200
    provider.close()


@pytest.mark.postgres
def test_postgres_unreachable_at_start_or_lost_later_fails_closed(
    pg_schema: str, clock: FakeClock
) -> None:
    url = sa.make_url(pg_schema)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_1],
        TOKENREQ_DATABASE_URL=through,
    )
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)

    @app.get("/whoami")
    @provider.require()
    def whoami() -> str:
        return "ok"

    worker = Worker(app, provider)
    _, full = worker.store.create("k")
    token = worker.token(full)
    assert worker.client.get("/whoami", headers={"Authorization": bearer(token)}).status_code == 200
    proxy.cut()  # the database goes away; the key's state is cached in this process
    for authorization in (bearer(token), basic(full), f"Bearer {full}"):
        error_of(worker.client.get("/whoami", headers={"Authorization": authorization}), 503, 50003)
    error_of(worker.exchange(full), 503, 50003)
    provider.close()
    # Unreachable from the start: a warning, then 503 for everything that needs it.
    app2 = Flask(__name__)
    app2.config.update(app.config)
    provider2 = TokenProvider(app2, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    error_of(Worker(app2, provider2).exchange(full), 503, 50003)
    provider2.close()


def test_refusals_never_show_a_secret_in_logs(
    worker: Worker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    key, full = worker.store.create("k")
    _, secret = parse_key(full)
    token = worker.token(full)
    with caplog.at_level(logging.DEBUG):
        worker.get(basic(mistyped(full)))  # mistyped: malformed
        worker.get(basic(f"{key.key_name}:{format_secret(bytes(32))}"))  # wrong secret
        worker.exchange(f"{key.key_name}:{format_secret(bytes(32))}")  # bad MAC
        worker.revoke_tokens(full, {"targets": ["clientId:a"]})
        worker.store.revoke(key.key_name, "leak test")
        worker.get(bearer(token))
        worker.get(basic(full))
        worker.exchange(full)
    logged = caplog.text + json.dumps(audit_rows(worker), default=str)
    assert secret not in logged
    assert token not in logged
    assert not SECRET_LIKE.search(logged.encode())


def test_the_app_id_of_new_keys_is_a_setting(make_worker: MakeWorker) -> None:
    key, _ = make_worker(TOKENREQ_APP_ID="billing").store.create("k")
    assert key.key_name.startswith("billing.")
    with pytest.raises(ConfigError) as info:
        make_worker(TOKENREQ_APP_ID="bad.app")
    assert "TOKENREQ_APP_ID" in str(info.value)
