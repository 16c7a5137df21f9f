"""Fixtures for the real-client interop suite: the two example apps on loopback.

- :func:`env_stack` runs ``examples/provider_app.py`` and ``examples/issuer_app.py``
  under gunicorn (2 workers each), configured only through ``TOKENREQ_*``
  environment variables, the way an outside check runs them.
- :func:`clocked_stack` serves both apps in this process on the process clock
  of the ``tokenreq_clock`` fixture (our pytest plugin), which a client can
  move forward through a test-only ``POST /_test/advance?ms=N`` route, and
  counts the requests that reach the issuer's token endpoint.
- :func:`run_client` runs a scenario of ``client.js`` (real ably-js) and returns
  its JSON outcome.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, request

from flask_tokenreq.testing import ManualClock
from tests.servers import HitCounter, run_gunicorn, serve_app

HERE = Path(__file__).resolve().parent
CLIENT_JS = HERE / "client.js"
TOKEN_PATH = "/api/tokenreq/token"
#: The one key both apps share (the issuer signs with it, the provider knows it).
KEY_NAME = "interop.key1"
KEY = f"{KEY_NAME}:interop-secret-0123456789abcdef0123456789abcdef"
SIGNING_SECRET = "interop-token-signing-secret-0123456789abcdef"
SESSION_SECRET = "interop-session-secret-0123456789abcdef0123456789"
PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}


@dataclass
class Stack:
    """An issuer and a provider on loopback."""

    issuer_url: str
    provider_url: str
    token_hits: HitCounter | None = None
    clock: ManualClock | None = None
    #: Bearer tokens (decoded) of the channel requests the provider received.
    bearer_tokens: list[str] = field(default_factory=list)
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def token_url(self) -> str:
        return self.issuer_url + TOKEN_PATH

    @property
    def port(self) -> int:
        return int(self.provider_url.rsplit(":", 1)[1])

    def login(self, user: str) -> str:
        """Sign ``user`` in at the issuer; returns the ``Cookie`` header value."""
        if user not in self.cookies:
            session = requests.Session()
            response = session.post(
                self.issuer_url + "/login",
                data={"username": user, "password": PASSWORDS[user]},
                timeout=10,
            )
            response.raise_for_status()
            self.cookies[user] = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
        return self.cookies[user]

    def client_config(self, user: str, **settings: Any) -> dict[str, Any]:
        """Settings for ``client.js``: authUrl at the issuer, endpoint/port at the provider."""
        return {
            "authUrl": self.token_url,
            "issuerUrl": self.token_url,
            "endpoint": "127.0.0.1",
            "port": self.port,
            "cookie": self.login(user),
            **settings,
        }


def run_client(node: str, config: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Run one ``client.js`` scenario with real ably-js; returns its JSON outcome."""
    done = subprocess.run(
        [node, str(CLIENT_JS)],
        input=json.dumps(config).encode("utf-8"),
        capture_output=True,
        timeout=timeout,
        cwd=HERE,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"client.js failed ({done.returncode}):\n{done.stderr.decode()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _gunicorn_stack(env: dict[str, str], tmp: Path) -> Iterator[Stack]:
    provider_env = {**env, "TOKENREQ_NONCE_STORE": f"sqlite:///{tmp / 'nonces.sqlite3'}"}
    provider_env["TOKENREQ_MESSAGES_DATABASE"] = f"sqlite:///{tmp / 'messages.sqlite3'}"
    with run_gunicorn(
        "examples.provider_app:create_app()", provider_env, workers=2, ready_path="/time"
    ) as provider:
        issuer_env = {**env, "TOKENREQ_PROVIDER_URL": provider.url}  # for format=token
        issuer_env.pop("TOKENREQ_PROVIDER_KEYS", None)
        with run_gunicorn(
            "examples.issuer_app:create_app()", issuer_env, workers=2, ready_path=TOKEN_PATH
        ) as issuer:
            yield Stack(issuer.url, provider.url)


@pytest.fixture(scope="session")
def env_stack() -> Iterator[Stack]:
    """Both examples under gunicorn, every setting from ``TOKENREQ_*`` variables.

    The issuer gets ``TOKENREQ_KEY``; the provider ``TOKENREQ_PROVIDER_KEYS`` (a
    JSON list holding the same key), ``TOKENREQ_SIGNING_SECRET`` and an SQLite
    ``TOKENREQ_NONCE_STORE`` shared by its workers.
    """
    env = {
        "TOKENREQ_KEY": KEY,
        "TOKENREQ_PROVIDER_KEYS": json.dumps([KEY]),
        "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
        "FLASK_SECRET_KEY": SESSION_SECRET,
    }
    with tempfile.TemporaryDirectory(prefix="tokenreq-interop-") as tmp:
        yield from _gunicorn_stack(env, Path(tmp))


@pytest.fixture(scope="session")
def minimal_env_stack() -> Iterator[Stack]:
    """Both examples under gunicorn with nothing but ``TOKENREQ_KEY`` set for both.

    (The provider falls back to ``[TOKENREQ_KEY]``; the signing secret and the
    session key are the development values. The databases go to a temporary
    folder instead of the repository's instance folder.)
    """
    with tempfile.TemporaryDirectory(prefix="tokenreq-interop-min-") as tmp:
        yield from _gunicorn_stack({"TOKENREQ_KEY": KEY}, Path(tmp))


@pytest.fixture
def clocked_stack(tmp_path: Path, tokenreq_clock: ManualClock) -> Iterator[Stack]:
    """Both examples in this process, on the ``tokenreq_clock`` fixture's process clock.

    ``POST <provider>/_test/advance?ms=N`` moves that clock forward (a
    test-only route, added here, not part of the example); the issuer and the
    provider both follow it, as they are built without a clock of their own.
    """
    from examples import issuer_app, provider_app

    clock = tokenreq_clock
    provider = provider_app.create_app(
        {
            "TOKENREQ_PROVIDER_KEYS": [KEY],
            "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
            "TOKENREQ_NONCE_STORE": "memory://",
            "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp_path / 'messages.sqlite3'}",
        },
        instance_path=str(tmp_path),
    )
    issuer = issuer_app.create_app({"TOKENREQ_KEY": KEY, "SECRET_KEY": SESSION_SECRET})
    hits = HitCounter(issuer)
    with serve_app(issuer) as issuer_url, serve_app(provider) as provider_url:
        stack = Stack(issuer_url, provider_url, token_hits=hits, clock=clock)
        _add_test_hooks(provider, stack, clock)
        yield stack


def _add_test_hooks(app: Flask, stack: Stack, clock: ManualClock) -> None:
    @app.post("/_test/advance")
    def advance() -> dict[str, int]:
        clock.advance(int(request.args["ms"]))
        return {"now": clock()}

    @app.before_request
    def record_bearer() -> None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if request.path.startswith("/channels/") and scheme == "Bearer":
            stack.bearer_tokens.append(base64.b64decode(value).decode())
