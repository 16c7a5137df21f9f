"""Tests of myapp.py with the flask-tokenreq pytest plugin.

The fixtures tokenreq_clock, tokenreq_key, tokenreq_sign and
tokenreq_recorder come with the package: nothing to import or configure.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_login import FlaskLoginClient
from flask_tokenreq import TokenRequest
from flask_tokenreq.testing import ManualClock, Recorder

from myapp import User, create_app


@pytest.fixture
def app(tokenreq_key: str, tokenreq_clock: ManualClock, tmp_path: Path) -> Flask:
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "TOKENREQ_KEY": tokenreq_key,  # the issuer signs with it...
            "TOKENREQ_PROVIDER_KEYS": [tokenreq_key],  # ...and the provider knows it
            "TOKENREQ_SIGNING_SECRET": secrets.token_urlsafe(32),
            "TOKENREQ_NONCE_STORE": f"sqlite:///{tmp_path / 'nonces.sqlite3'}",
        }
    )
    app.test_client_class = FlaskLoginClient  # app.test_client(user=...) signs in
    return app


@pytest.fixture
def alice(app: Flask) -> FlaskClient:
    return app.test_client(user=User("alice"))


def token_request(client: FlaskClient, **params: Any) -> dict[str, Any]:
    response = client.get("/auth/token", query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def exchange(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post(f"/keys/{body['keyName']}/requestToken", json=body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_signed_in_editor_writes_a_note(alice: FlaskClient, tokenreq_recorder: Recorder) -> None:
    issued = exchange(alice, token_request(alice))
    assert issued.status_code == 200
    token = issued.get_json()["token"]

    written = alice.post("/notes/todo", json={"text": "buy milk"}, headers=bearer(token))
    assert written.status_code == 201
    assert written.get_json() == {"text": "buy milk", "by": "alice"}

    # What the issuer signed and what the provider did with it, in order.
    [signed] = tokenreq_recorder.token_requests
    [done] = tokenreq_recorder.exchanges
    assert done.token_request == signed
    assert (done.status, done.code, done.token) == (200, None, token)


def test_a_replayed_token_request_is_refused(
    alice: FlaskClient, tokenreq_recorder: Recorder
) -> None:
    exchange(alice, token_request(alice))
    replayed = exchange(alice, tokenreq_recorder.token_requests[-1].to_dict())
    assert replayed.status_code == 401
    assert replayed.get_json()["error"]["code"] == 40105  # nonce replayed
    assert [(e.status, e.code) for e in tokenreq_recorder.exchanges] == [(200, None), (401, 40105)]


def test_a_token_request_older_than_two_minutes_is_refused(
    alice: FlaskClient, tokenreq_clock: ManualClock
) -> None:
    body = token_request(alice)
    tokenreq_clock.advance(121_000)  # past the provider's 120 s window
    stale = exchange(alice, body)
    assert stale.status_code == 401
    assert stale.get_json()["error"]["code"] == 40104  # timestamp not current


def test_an_expired_token_is_refused(alice: FlaskClient, tokenreq_clock: ManualClock) -> None:
    token = exchange(alice, token_request(alice, ttl=60_000)).get_json()["token"]
    assert alice.get("/notes/todo", headers=bearer(token)).status_code == 200
    tokenreq_clock.advance(120_000)  # well past the 60 s ttl and the provider's 5 s leeway
    expired = alice.get("/notes/todo", headers=bearer(token))
    assert expired.status_code == 401
    assert expired.get_json()["error"]["code"] == 40142  # token expired


def test_a_reader_cannot_write(app: Flask) -> None:
    bob = app.test_client(user=User("bob"))
    token = exchange(bob, token_request(bob)).get_json()["token"]
    assert bob.get("/notes/todo", headers=bearer(token)).status_code == 200
    refused = bob.post("/notes/todo", json={"text": "hi"}, headers=bearer(token))
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == 40160  # capability not permitted


def test_anonymous_users_get_no_token_request(app: Flask) -> None:
    response = app.test_client().get("/auth/token")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == 40100


def test_the_provider_alone_with_signed_token_requests(
    app: Flask, tokenreq_sign: Callable[..., TokenRequest]
) -> None:
    client = app.test_client()
    reader = tokenreq_sign(capability={"notes:todo": ["history"]}, client_id="carol")
    token = exchange(client, reader.to_dict()).get_json()["token"]
    assert client.get("/notes/todo", headers=bearer(token)).status_code == 200
    assert client.get("/notes/other", headers=bearer(token)).status_code == 401

    other_key = tokenreq_sign(key="other.key:" + secrets.token_urlsafe(32))
    assert exchange(client, other_key.to_dict()).get_json()["error"]["code"] == 40101
