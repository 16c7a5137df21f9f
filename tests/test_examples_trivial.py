"""Trivial's client keys (``examples/trivial_app.py``), as a user runs them.

The key comes from ``flask tokenreq keys create`` in a real ``flask``
subprocess; the app runs under gunicorn (two workers, another process than
the CLI) and is called over real HTTP, with its keys on a SQLite file and on
PostgreSQL. A key revoked by the CLI is refused by the very next request,
whichever worker takes it. No answer and no log line holds the key's secret.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from examples import demo, trivial_app
from flask_tokenreq import sign_token_request
from flask_tokenreq.keys import parse_key
from tests.conftest import ROOT
from tests.dbs import FERNET_1, module_db_url
from tests.servers import Gunicorn, run_gunicorn

__all__ = ["module_db_url"]  # a fixture used by name

FLASK = str(Path(sys.executable).with_name("flask"))
APP = "examples.trivial_app:create_app()"
#: A request to a worker still reading its database answers well within this.
TIMEOUT = 30


@dataclass
class Trivial:
    """The example's environment, the CLI on it and the app under gunicorn."""

    env: dict[str, str]
    server: Gunicorn

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [FLASK, "--app", APP, "tokenreq", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done

    def create_key(self, *args: str) -> str:
        """``keys create --name "Billing worker" --json``: the full key, shown this once."""
        done = self.cli("keys", "create", "--name", "Billing worker", *args, "--json")
        key: str = json.loads(done.stdout)["key"]
        return key

    def call(self, authorization: str | None, method: str = "GET", **kwargs: Any) -> Any:
        headers = {} if authorization is None else {"Authorization": authorization}
        return requests.request(
            method, self.server.url + "/api/invoices", headers=headers, timeout=TIMEOUT, **kwargs
        )


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(key.encode()).decode()


def refused(response: Any, status: int, code: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["X-Ably-ErrorCode"]) == code
    error = response.json()["error"]
    assert (error["code"], error["statusCode"]) == (code, status)
    message: str = error["message"]
    return message


@pytest.fixture(scope="module")
def trivial(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trivial]:
    """One server per database for this module's tests; each test makes its own keys."""
    tmp = tmp_path_factory.mktemp("trivial")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENREQ_", "FLASK_"))}
    env.update(
        {
            "TOKENREQ_KEY_ENCRYPTION_KEYS": json.dumps([FERNET_1]),
            "TOKENREQ_DATABASE_URL": module_db_url,
            "TOKENREQ_NONCE_STORE": f"sqlite:///{tmp / 'nonces.sqlite3'}",
            "TOKENREQ_SIGNING_SECRET": "trivial-test-signing-secret-0123456789abcdef",
            "PYTHONWARNINGS": "ignore",
        }
    )
    with run_gunicorn(APP, env, workers=2, ready_path="/time") as server:
        yield Trivial(env, server)


def test_a_key_from_the_cli_calls_the_guarded_endpoint(trivial: Trivial) -> None:
    key = trivial.create_key()
    key_name, secret = parse_key(key)
    assert key_name.startswith("trivial.")
    for authorization in (f"Bearer {key}", basic(key)):
        listed = trivial.call(authorization)
        assert listed.status_code == 200, listed.text
        assert listed.json()["caller"] == key_name
        created = trivial.call(
            authorization, "POST", json={"customer": "acme", "amountCents": 1200}
        )
        assert created.status_code == 201, created.text
        assert created.json()["createdBy"] == key_name
        assert created.json()["amountCents"] == 1200
    bad = trivial.call(f"Bearer {key}", "POST", json={"customer": "acme", "amountCents": "12"})
    assert "amountCents" in refused(bad, 400, 40000)
    # The key is not a credential anywhere else: no answer, no log line holds its secret.
    assert secret not in trivial.server.log_text()


def test_a_key_revoked_by_the_cli_is_refused_at_once(trivial: Trivial) -> None:
    key = trivial.create_key()
    key_name, _ = parse_key(key)
    for _ in range(4):  # both workers have served it
        assert trivial.call(f"Bearer {key}").status_code == 200
    trivial.cli("keys", "revoke", key_name, "--reason", "worker decommissioned")
    for _ in range(4):  # the next request, whichever worker takes it
        for authorization in (f"Bearer {key}", basic(key)):
            assert "revoked" in refused(trivial.call(authorization), 401, 40131).lower()


def test_a_malformed_or_wrong_key_is_40101(trivial: Trivial) -> None:
    key = trivial.create_key()
    key_name, secret = parse_key(key)
    mistyped = key[:-1] + ("A" if key[-1] != "A" else "B")  # fails the tkr_ checksum
    for authorization in (f"Bearer {mistyped}", basic(mistyped), f"Bearer {key[:-6]}"):
        assert "malformed" in refused(trivial.call(authorization), 401, 40101)
    other_secret = parse_key(trivial.create_key())[1]  # well-formed, not this key's
    assert "wrong key secret" in refused(
        trivial.call(f"Bearer {key_name}:{other_secret}"), 401, 40101
    )
    unknown = f"trivial.Nobody00:{secret}"
    assert "No key named" in refused(trivial.call(f"Bearer {unknown}"), 401, 40101)
    assert "key itself" in refused(trivial.call(None), 401, 40100)


def test_a_token_is_refused_where_the_key_is_expected(trivial: Trivial) -> None:
    """The key may get tokens (Ably's exchange), but these routes take the key itself: 40162."""
    key = trivial.create_key()
    treq = sign_token_request(key, capability={"invoices": ["history"]})
    exchanged = requests.post(
        f"{trivial.server.url}/keys/{treq.key_name}/requestToken",
        json=treq.to_dict(),
        timeout=TIMEOUT,
    )
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()["token"]
    as_ably_sends_it = base64.b64encode(token.encode()).decode()
    for authorization in (f"Bearer {token}", f"Bearer {as_ably_sends_it}"):
        assert "not a token" in refused(trivial.call(authorization), 401, 40162)


def test_a_read_only_key_from_the_cli_cannot_create(trivial: Trivial) -> None:
    key = trivial.create_key("--capability", '{"invoices":["history"]}')
    assert trivial.call(f"Bearer {key}").status_code == 200
    created = trivial.call(f"Bearer {key}", "POST", json={"customer": "acme", "amountCents": 1})
    refused(created, 401, 40160)


@pytest.mark.parametrize("first", ["trivial", "demo"])
def test_trivial_and_the_demo_start_in_one_instance_folder_in_either_order(
    first: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Trivial walkthrough, then ``make demo`` (or the other way round), on their
    development settings in one checkout: each opens its own key database, encrypted under
    its own development key, so neither refuses to start (canary mismatch)."""
    for name in list(os.environ):
        if name.startswith(("TOKENREQ_", "FLASK_")) and not name.startswith("TOKENREQ_TEST"):
            monkeypatch.delenv(name)
    apps = {"trivial": trivial_app.create_app, "demo": demo.create_app}
    order = [first, *(name for name in apps if name != first)]
    for name in order + order:  # and each again, as after a restart
        app = apps[name](instance_path=str(tmp_path))
        provider = app.extensions["tokenreq_provider"]
        with app.app_context():
            created, _ = provider.keys.for_change().create(f"{name} key", actor="test")
            listed = [info.name for info in provider.keys.for_change().list("all")]
        assert created.name in listed
        provider.close()
    assert (tmp_path / "trivial.sqlite3").is_file()
    assert (tmp_path / "tokenreq.sqlite3").is_file()
