"""The pytest plugin (flask_tokenreq.testing): its four fixtures, used by this suite.

The fixtures come from the ``tokenreq`` entry point of the installed package,
not from a conftest. The last tests run the documented example suite
(``examples/testing``, the one in ``docs/testing.md``) in a temporary folder
outside the repository, the way an app's own test suite would.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_login import FlaskLoginClient, LoginManager, UserMixin

import flask_tokenreq
import flask_tokenreq.testing
from flask_tokenreq import TokenIssuer, TokenProvider, TokenRequest, parse_key, verify_mac
from flask_tokenreq.clock import now_ms
from flask_tokenreq.keys.base import configured_key
from flask_tokenreq.stores import open_nonce_store
from flask_tokenreq.testing import Exchange, ManualClock, Recorder
from flask_tokenreq.tokens import TokenService

from .conftest import ROOT
from .servers import serve_app

SIGNING_SECRET = "plugin-test-signing-secret-0123456789abcdef"
SESSION_KEY = "plugin-test-session-key-0123456789abcdef"
EXAMPLE = ROOT / "examples" / "testing"
Sign = Callable[..., TokenRequest]


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def issuer_app(key: str, **config: Any) -> Flask:
    """An app with flask-login and an issuer built without a clock (the process's)."""
    app = Flask("plugin_issuer")
    app.config.update(
        TESTING=True,
        SECRET_KEY=SESSION_KEY,
        TOKENREQ_KEY=key,
        TOKENREQ_ISSUER_CAPABILITY={"*": ["subscribe", "publish"]},
        **config,
    )
    app.test_client_class = FlaskLoginClient
    LoginManager(app).user_loader(User)
    TokenIssuer(app)
    return app


def provider_app(key: str, **config: Any) -> Flask:
    """A provider at the root, built without a clock (the process's)."""
    app = Flask("plugin_provider")
    app.config.update(
        TESTING=True,
        TOKENREQ_PROVIDER_KEYS=[key],
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_NONCE_STORE="memory://",
        **config,
    )
    TokenProvider(app)
    return app


def exchange(client: FlaskClient, body: Any, key_name: str | None = None) -> Any:
    if isinstance(body, TokenRequest):
        key_name, body = body.key_name, body.to_dict()
    return client.post(f"/keys/{key_name}/requestToken", json=body)


# -- the plugin ------------------------------------------------------------------------


def test_the_plugin_is_loaded_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    [entry] = [e for e in entry_points(group="pytest11") if e.name == "tokenreq"]
    assert entry.value == "flask_tokenreq.testing"
    assert pytestconfig.pluginmanager.get_plugin("tokenreq") is flask_tokenreq.testing


def test_importing_the_plugin_loads_and_changes_nothing() -> None:
    code = """
import json, sys
import flask_tokenreq.testing
from flask_tokenreq import clock, signals
heavy = {"sqlalchemy", "redis", "psycopg", "requests", "jwt", "flask_tokenreq.nonces"}
print(json.dumps({
    "loaded": sorted(heavy & set(sys.modules)),
    "override": clock._override is not None,
    "receivers": sum(len(s.receivers) for s in (
        signals.token_request_signed, signals.token_issued, signals.token_refused)),
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == {"loaded": [], "override": False, "receivers": 0}


# -- tokenreq_clock --------------------------------------------------------------------


def test_a_manual_clock_starts_at_the_wall_clock_and_moves_only_when_told() -> None:
    before = time.time_ns() // 1_000_000
    clock = ManualClock()
    after = time.time_ns() // 1_000_000
    assert before <= clock() <= after
    start = clock()
    assert clock() == start
    assert clock.advance(1500) == start + 1500 == clock()
    assert clock.advance(-500) == start + 1000
    assert clock.set(42) == 42 == clock()
    assert ManualClock(7)() == 7
    assert repr(ManualClock(7)) == "ManualClock(7)"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.advance(1.5), TypeError),
        (lambda c: c.advance(True), TypeError),
        (lambda c: c.set("1000"), TypeError),
        (lambda c: c.set(-1), ValueError),
        (lambda c: c.advance(-2_000_000), ValueError),
        (lambda c: ManualClock(-1), ValueError),
    ],
)
def test_a_manual_clock_takes_whole_milliseconds(
    call: Callable[[ManualClock], Any], error: type[Exception]
) -> None:
    clock = ManualClock(1_000_000)
    with pytest.raises(error, match=r"milliseconds|epoch"):
        call(clock)
    assert clock() == 1_000_000


def test_the_clock_fixture_is_the_process_clock(tokenreq_clock: ManualClock) -> None:
    assert now_ms() == tokenreq_clock()
    tokenreq_clock.advance(3_600_000)
    assert now_ms() == tokenreq_clock()
    tokenreq_clock.set(1_000)
    assert now_ms() == 1_000
    assert flask_tokenreq.sign_token_request("a.b:" + "s" * 32).timestamp == 1_000


def test_nonce_stores_and_token_services_follow_the_clock(
    tokenreq_clock: ManualClock, tokenreq_key: str
) -> None:
    store = open_nonce_store("memory://")
    expires = tokenreq_clock() + 1_000
    assert store.claim("a.b", "n" * 16, expires) is True
    assert store.claim("a.b", "n" * 16, expires) is False
    tokenreq_clock.advance(1_001)  # the claim has expired on the fixture's clock
    assert store.claim("a.b", "n" * 16, tokenreq_clock() + 1_000) is True

    tokenreq_clock.set(1_800_000_000_000)  # a whole second: exp is not rounded up
    service = TokenService(secret=SIGNING_SECRET, leeway_s=0)
    issued = service.mint(
        key_name=parse_key(tokenreq_key)[0],
        capability=flask_tokenreq.Capability.all(),
        client_id=None,
        issued_ms=tokenreq_clock(),
        expires_ms=tokenreq_clock() + 60_000,
    )
    keys = flask_tokenreq.StaticKeyStore.from_config([tokenreq_key], setting="keys")
    tokenreq_clock.advance(59_999)
    assert service.verify(issued.token, keys).key_name == parse_key(tokenreq_key)[0]
    tokenreq_clock.advance(1)
    with pytest.raises(flask_tokenreq.TokenReqError) as info:
        service.verify(issued.token, keys)
    assert info.value.code == 40142


# (Issuers and providers following the fixture: tests/test_extensions.py.)


# -- tokenreq_key and tokenreq_sign ------------------------------------------------------

_keys_seen: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_key_with_a_long_secret(tokenreq_key: str, run: int) -> None:
    key_name, secret = configured_key("TOKENREQ_KEY", tokenreq_key)  # the config policy
    assert re.fullmatch(r"test[0-9a-f]{6}\.[0-9a-f]{6}", key_name)
    assert len(secret.encode()) >= 32
    assert tokenreq_key not in _keys_seen
    _keys_seen.append(tokenreq_key)


def test_sign_signs_with_the_key_at_the_clock(
    tokenreq_sign: Sign, tokenreq_key: str, tokenreq_clock: ManualClock
) -> None:
    key_name, secret = parse_key(tokenreq_key)
    treq = tokenreq_sign()
    assert (treq.key_name, treq.timestamp) == (key_name, tokenreq_clock())
    assert verify_mac(treq, secret)
    assert len(treq.nonce) >= 16
    assert tokenreq_sign().nonce != treq.nonce
    tokenreq_clock.advance(5_000)
    assert tokenreq_sign().timestamp == treq.timestamp + 5_000


def test_sign_takes_the_params_of_sign_token_request(
    tokenreq_sign: Sign, tokenreq_key: str
) -> None:
    treq = tokenreq_sign(
        ttl=60_000,
        capability={"b": ["subscribe", "publish"], "a": ["history"]},
        client_id="alice",
        timestamp=123_456,
        nonce="0123456789abcdef",
    )
    expected = flask_tokenreq.sign_token_request(
        tokenreq_key,
        ttl=60_000,
        capability='{"a":["history"],"b":["publish","subscribe"]}',
        client_id="alice",
        timestamp=123_456,
        nonce="0123456789abcdef",
    )
    assert treq == expected
    other = "other.key:" + "o" * 40
    signed = tokenreq_sign(key=other)
    assert signed.key_name == "other.key"
    assert verify_mac(signed, "o" * 40)
    assert not verify_mac(signed, parse_key(tokenreq_key)[1])


# -- tokenreq_recorder ------------------------------------------------------------------


def test_the_recorder_sees_what_the_issuer_signed_in_order(
    tokenreq_recorder: Recorder, tokenreq_key: str
) -> None:
    app = issuer_app(tokenreq_key)
    alice, bob = app.test_client(user=User("alice")), app.test_client(user=User("bob"))
    bodies = [
        alice.get("/tokenreq/token").get_json(),
        bob.post("/tokenreq/token", data={"capability": '{"x":["subscribe"]}'}).get_json(),
        alice.get("/tokenreq/token", query_string={"ttl": 60_000}).get_json(),
    ]
    assert tokenreq_recorder.token_requests == [TokenRequest.from_dict(b) for b in bodies]
    # Nothing signed, nothing recorded: a JWT, a refusal, an anonymous request.
    assert alice.get("/tokenreq/token", query_string={"format": "jwt"}).status_code == 200
    assert alice.get("/tokenreq/token", query_string={"ttl": "x"}).status_code == 400
    assert app.test_client().get("/tokenreq/token").status_code == 401
    assert len(tokenreq_recorder.token_requests) == 3
    assert tokenreq_recorder.exchanges == []


def test_the_recorder_sees_every_exchange_with_its_status_and_code(
    tokenreq_recorder: Recorder,
    tokenreq_sign: Sign,
    tokenreq_clock: ManualClock,
    tokenreq_key: str,
) -> None:
    client = provider_app(tokenreq_key).test_client()
    key_name = parse_key(tokenreq_key)[0]
    first = tokenreq_sign(client_id="alice")
    responses = [
        exchange(client, first),
        exchange(client, first),  # replayed
        exchange(client, tokenreq_sign(timestamp=tokenreq_clock() - 121_000)),
        exchange(client, tokenreq_sign(ttl=86_400_001)),
        exchange(client, tokenreq_sign(key="nobody.key:" + "n" * 40)),
        client.post(f"/keys/{key_name}/requestToken", data=b"{", content_type="application/json"),
        exchange(client, tokenreq_sign(capability={"x": ["publish"]})),
    ]
    recorded = tokenreq_recorder.exchanges
    assert [(e.status, e.code) for e in recorded] == [
        (200, None),
        (401, 40105),
        (401, 40104),
        (400, 40003),
        (401, 40101),
        (400, 40001),
        (200, None),
    ]
    for response, done in zip(responses, recorded, strict=True):
        assert response.status_code == done.status
        if done.accepted:
            assert response.get_json() == done.details
            assert done.token == response.get_json()["token"]
            assert done.message is None
        else:
            assert response.headers["X-Ably-ErrorCode"] == str(done.code)
            assert response.get_json()["error"]["message"] == done.message
            assert done.details is None
            assert done.token is None
    assert recorded[0].token_request == recorded[1].token_request == first
    assert recorded[4].key_name == "nobody.key"
    assert recorded[5].token_request is None  # the body was not a TokenRequest
    assert recorded[5].key_name == key_name
    assert tokenreq_recorder.refusals == recorded[1:6]
    assert tokenreq_recorder.token_requests == []  # nothing went through an issuer
    assert recorded[0].token is not None
    assert recorded[0].token not in repr(recorded[0])
    tokenreq_recorder.clear()
    assert tokenreq_recorder.exchanges == []
    assert tokenreq_recorder.refusals == []


def test_the_recorder_follows_a_token_request_from_issuer_to_provider_over_http(
    tokenreq_recorder: Recorder, tokenreq_key: str
) -> None:
    """``format=token``: the issuer exchanges at a provider served in a thread of this process."""
    with serve_app(provider_app(tokenreq_key)) as provider_url:
        app = issuer_app(tokenreq_key, TOKENREQ_PROVIDER_URL=provider_url)
        response = app.test_client(user=User("alice")).get(
            "/tokenreq/token", query_string={"format": "token"}
        )
    assert response.status_code == 200, response.get_json()
    [signed] = tokenreq_recorder.token_requests
    [done] = tokenreq_recorder.exchanges
    assert done == Exchange(signed, signed.key_name, 200, None, details=response.get_json())
    assert signed.client_id == "alice"


def test_a_disconnected_recorder_records_nothing(tokenreq_sign: Sign, tokenreq_key: str) -> None:
    client = provider_app(tokenreq_key).test_client()
    recorder = Recorder()
    recorder.connect()
    exchange(client, tokenreq_sign())
    recorder.disconnect()
    exchange(client, tokenreq_sign())
    assert [(e.status, e.code) for e in recorder.exchanges] == [(200, None)]
    assert repr(recorder) == "<Recorder token_requests=0 exchanges=[(200, None)]>"


# -- an app's own test suite, outside this repository ------------------------------------

#: Run after the documented suite: the fixtures of one test leave nothing behind.
TEARDOWN_TESTS = """
from __future__ import annotations

from flask_tokenreq import signals
from flask_tokenreq.clock import now_ms

SEEN = []


def test_moves_the_clock_and_records(tokenreq_clock, tokenreq_recorder):
    tokenreq_clock.set(946_684_800_000)  # 2000-01-01
    assert now_ms() == 946_684_800_000
    SEEN.append(tokenreq_recorder)


def test_afterwards_the_wall_clock_and_no_receivers():
    assert now_ms() > 1_700_000_000_000  # after November 2023: the wall clock again
    for signal in (signals.token_request_signed, signals.token_issued, signals.token_refused):
        assert not signal.receivers
"""


@pytest.fixture
def outside_suite(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The example app and its tests in an empty folder, and an environment for pytest."""
    suite = tmp_path / "myapp"
    suite.mkdir()
    for name in ("myapp.py", "test_myapp.py"):
        shutil.copy(EXAMPLE / name, suite / name)
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKENREQ_", "FLASK_", "PYTEST_", "PYTHON"))
    }
    return suite, env


def _pytest(suite: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-v", *args],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_an_apps_own_suite_uses_the_four_fixtures(
    outside_suite: tuple[Path, dict[str, str]],
) -> None:
    suite, env = outside_suite
    (suite / "test_teardown.py").write_text(TEARDOWN_TESTS)
    done = _pytest(suite, env)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = set(re.findall(r"^(\S+::\S+) PASSED", done.stdout, re.MULTILINE))
    documented = {
        f"test_myapp.py::{node.name}"
        for node in ast.parse((EXAMPLE / "test_myapp.py").read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    assert len(documented) == 7
    assert passed == documented | {
        "test_teardown.py::test_moves_the_clock_and_records",
        "test_teardown.py::test_afterwards_the_wall_clock_and_no_receivers",
    }
    used = (EXAMPLE / "test_myapp.py").read_text()
    for fixture in ("tokenreq_clock", "tokenreq_key", "tokenreq_sign", "tokenreq_recorder"):
        assert f"{fixture}: " in used


def test_without_the_plugin_the_fixtures_do_not_exist(
    outside_suite: tuple[Path, dict[str, str]],
) -> None:
    """The control: the fixtures come from the ``tokenreq`` entry point and nowhere else."""
    suite, env = outside_suite
    done = _pytest(suite, env, "-p", "no:tokenreq", "test_myapp.py::test_a_reader_cannot_write")
    assert done.returncode == 1
    assert "fixture 'tokenreq_key' not found" in done.stdout


def test_the_example_suite_imports_only_public_names() -> None:
    """flask_tokenreq names in ``__all__`` of the package or of flask_tokenreq.testing."""
    public = {
        "flask_tokenreq": set(flask_tokenreq.__all__),
        "flask_tokenreq.testing": set(flask_tokenreq.testing.__all__),
    }
    allowed_modules = {"__future__", "secrets", "collections.abc", "pathlib", "typing"}
    allowed_modules |= {"pytest", "flask", "flask.testing", "flask_login", "myapp"}
    for name in ("myapp.py", "test_myapp.py"):
        for node in ast.walk(ast.parse((EXAMPLE / name).read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name in allowed_modules, (name, alias.name)
            if isinstance(node, ast.ImportFrom):
                assert node.module is not None
                if node.module in public:
                    imported = {alias.name for alias in node.names}
                    assert imported <= public[node.module], (name, imported)
                else:
                    assert node.module in allowed_modules, (name, node.module)


# -- the guide ------------------------------------------------------------------------------


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL)


def test_the_guide_shows_the_example_files_exactly() -> None:
    blocks = _python_blocks((ROOT / "docs" / "testing.md").read_text())
    for name in ("myapp.py", "test_myapp.py"):
        assert (EXAMPLE / name).read_text() in blocks, f"docs/testing.md lacks {name} verbatim"
