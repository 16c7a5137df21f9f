"""The Flask extension pattern: per-app state in app.extensions, one init per app,
lazy imports, and the process clock used while a test overrides it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_login import LoginManager, UserMixin, login_user

from flask_tokenreq import TokenIssuer, TokenProvider, TokenRequest, clock, sign_token_request
from flask_tokenreq.errors import ConfigError
from flask_tokenreq.issuer import STATE as ISSUER_STATE
from flask_tokenreq.keys import StaticKeyStore
from flask_tokenreq.keys.chain import KeyChain
from flask_tokenreq.provider import STATE as PROVIDER_STATE
from flask_tokenreq.stores import MemoryNonceStore
from flask_tokenreq.testing import ManualClock, Recorder

from .conftest import KEY, KEY_NAME, OTHER_KEY, ROOT, FakeClock
from .test_provider import SIGNING_SECRET


def _provider_app(keys: list[str], store: MemoryNonceStore) -> tuple[Flask, TokenProvider]:
    app = Flask(__name__)
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=keys)
    return app, TokenProvider(app, nonces=store)


def test_state_lives_in_each_apps_extensions(clock: FakeClock) -> None:
    provider = TokenProvider(nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    first, second = Flask("first"), Flask("second")
    for app, key in ((first, KEY), (second, OTHER_KEY)):
        app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[key])
        provider.init_app(app)
        assert app.extensions["tokenreq_provider"] is provider
        assert PROVIDER_STATE in app.extensions
    with first.app_context():
        assert provider.keys.get(KEY_NAME) is not None
    with second.app_context():
        assert provider.keys.get(KEY_NAME) is None
    assert not any(isinstance(v, Flask) for v in vars(provider).values())


@pytest.mark.parametrize("kind", ["issuer", "provider"])
def test_a_second_init_app_is_an_error_in_both(kind: str, clock: FakeClock) -> None:
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_KEY=KEY, TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY]
    )
    ext: Any
    if kind == "issuer":
        ext = TokenIssuer(app)
        state_key = ISSUER_STATE
    else:
        ext = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False))
        state_key = PROVIDER_STATE
    state = app.extensions[state_key]
    with pytest.raises(RuntimeError, match="already registered"):
        ext.init_app(app)
    other = TokenIssuer() if kind == "issuer" else TokenProvider()
    with pytest.raises(RuntimeError, match="already registered"):
        other.init_app(app)
    assert app.extensions[state_key] is state  # nothing swapped


def test_a_refused_second_provider_opens_nothing(tmp_path: Path, clock: FakeClock) -> None:
    """No nonce store, key database or audit log is opened (and left open) by an
    ``init_app`` that is refused for being the second."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=[KEY],
        TOKENREQ_NONCE_STORE=f"sqlite:///{tmp_path / 'nonces.sqlite3'}",
        TOKENREQ_DATABASE_URL=f"sqlite:///{tmp_path / 'audit.sqlite3'}",
    )
    first = TokenProvider(
        app,
        keys=KeyChain(StaticKeyStore.from_config([KEY]), None),
        nonces=MemoryNonceStore(now_ms=clock, warn=False),
    )
    assert list(tmp_path.iterdir()) == []  # the first opened nothing either
    for second in (first, TokenProvider()):  # both would open the two files
        with pytest.raises(RuntimeError, match="already registered"):
            second.init_app(app)
        assert list(tmp_path.iterdir()) == []


def test_an_init_app_refused_for_its_settings_leaves_nothing_open(tmp_path: Path) -> None:
    """The nonce store is opened before the keys are read: a ``ConfigError`` about
    the keys closes it again (no file of it stays open in this process)."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_NONCE_STORE=f"sqlite:///{tmp_path / 'nonces.sqlite3'}",
    )  # and no keys

    def open_here() -> list[str]:
        """Files under ``tmp_path`` this process holds open."""
        paths = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # gone since listed
                paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        return [p for p in paths if p.startswith(str(tmp_path))]

    for _ in range(3):
        with pytest.raises(ConfigError, match="no keys"):
            TokenProvider(app)
    assert (tmp_path / "nonces.sqlite3").exists()  # the store was opened
    assert open_here() == []


def _both_roles_app(provider_keys: list[str]) -> Flask:
    """An app for an issuer signing with ``KEY`` (for 1 h) and a provider whose
    tokens last at most 10 minutes."""
    app = Flask(__name__)
    app.config.update(
        TOKENREQ_KEY=KEY,
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_PROVIDER_KEYS=provider_keys,
        TOKENREQ_MAX_TTL=600_000,
        TOKENREQ_DEFAULT_TTL=600_000,
    )
    return app


@pytest.mark.parametrize("provider_first", [False, True])
def test_an_issuer_and_provider_app_accepts_its_own_ttl(
    provider_first: bool, clock: FakeClock
) -> None:
    """On one app, ``TOKENREQ_TTL`` above ``TOKENREQ_MAX_TTL`` would make every exchange
    of its own TokenRequests 40003: the second ``init_app`` refuses it, either way round."""
    app = _both_roles_app(provider_keys=[KEY])
    issuer = TokenIssuer()
    provider = TokenProvider(nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    first, second = (provider, issuer) if provider_first else (issuer, provider)
    first.init_app(app)
    with pytest.raises(ConfigError) as info:
        second.init_app(app)
    assert "TOKENREQ_TTL (3600000 ms" in str(info.value)
    assert "TOKENREQ_MAX_TTL (600000 ms" in str(info.value)
    app.config["TOKENREQ_TTL"] = 600_000  # equal is fine
    second.init_app(app)


def test_an_issuer_signing_for_another_service_is_not_bound_by_the_providers_ttl(
    clock: FakeClock,
) -> None:
    """The issuer's key is not one the provider serves (it signs for Ably, say)."""
    app = _both_roles_app(provider_keys=[OTHER_KEY])
    TokenIssuer(app)
    TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)


def test_import_loads_no_storage_driver_or_http_client() -> None:
    code = """
import json, sys
import flask_tokenreq
from flask_tokenreq import TokenIssuer, TokenProvider, sign_token_request, verify_mac
heavy = ("sqlalchemy", "redis", "psycopg", "requests")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(heavy))))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    # TokenIssuer's format=token uses the HTTP client; it is imported with the issuer.
    assert json.loads(out) in ([], ["requests"])
    assert "sqlalchemy" not in out


class _User(UserMixin):
    def __init__(self, name: str) -> None:
        self.id = name


def test_the_process_clock_reaches_issuer_and_provider(
    tokenreq_clock: ManualClock,
    tokenreq_key: str,
    tokenreq_sign: Callable[..., TokenRequest],
    tokenreq_recorder: Recorder,
) -> None:
    """Built without ``now_ms``, both extensions read the process clock (the fixture's)."""
    tokenreq_clock.set(1_800_000_000_000)
    issuer_app = Flask(__name__)
    issuer_app.config.update(
        SECRET_KEY="s" * 40, TOKENREQ_KEY=tokenreq_key, TOKENREQ_ISSUER_CAPABILITY={"*": ["*"]}
    )
    LoginManager(issuer_app).user_loader(_User)

    @issuer_app.post("/login")
    def login() -> str:
        login_user(_User("alice"))
        return "ok"

    TokenIssuer(issuer_app)  # no now_ms: the process clock
    client = issuer_app.test_client()
    client.post("/login")
    treq = client.get("/tokenreq/token").get_json()
    assert treq["timestamp"] == tokenreq_clock()
    assert tokenreq_recorder.token_requests == [TokenRequest.from_dict(treq)]

    app, _ = _provider_app([tokenreq_key], MemoryNonceStore(warn=False))
    key_name = treq["keyName"]
    exchange = app.test_client().post(f"/keys/{key_name}/requestToken", json=treq)
    assert exchange.status_code == 200
    assert exchange.get_json()["issued"] == tokenreq_clock()
    assert app.test_client().get("/time").get_json() == [tokenreq_clock()]
    tokenreq_clock.advance(121_000)  # past the 120 s window, on the process clock only
    late = tokenreq_sign(timestamp=tokenreq_clock() - 121_000)
    refused = app.test_client().post(f"/keys/{key_name}/requestToken", json=late.to_dict())
    assert refused.get_json()["error"]["code"] == 40104
    assert [(e.status, e.code) for e in tokenreq_recorder.exchanges] == [(200, None), (401, 40104)]


def test_the_clock_override_ends_with_its_block() -> None:
    fake = FakeClock(1_800_000_000_000)
    inner = FakeClock(1_900_000_000_000)
    with clock.override(fake):
        assert clock.now_ms() == fake()
        with clock.override(inner):
            assert clock.now_ms() == inner()
        assert clock.now_ms() == fake()
    assert abs(clock.now_ms() - fake()) > 1_000_000  # back to the wall clock


def test_every_json_answer_says_nosniff(clock: FakeClock) -> None:
    app, _ = _provider_app([KEY], MemoryNonceStore(now_ms=clock, warn=False))
    client = app.test_client()
    treq = sign_token_request(KEY)
    answers = [
        client.get("/time"),
        client.post(f"/keys/{KEY_NAME}/requestToken", json=treq.to_dict()),
        client.post(f"/keys/{KEY_NAME}/requestToken", data=b"{"),
        client.get("/keys/nothing/here"),
    ]
    for response in answers:
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.request.path
        assert response.headers["Cache-Control"] == "no-store"
