"""The seed-flow examples through Flask's test client (their pages: tests/browser).

- ``examples/archiva_app.py``: the frontend token route hands out 90-second,
  read-only tokens for one project the user may read, and nothing else.
- ``examples/velt_app.py``: the token endpoint checks the session first,
  puts the user's properties in the JWT, and takes nothing about who the
  user is from the request; the API reads those properties from the token.
- ``examples/seed.py``: what they share (settings, the examples' sign-in).

Apps run on the plugin's ``tokenreq_clock``; their keys come from ``tokenreq_key``.
"""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from examples import archiva_app, velt_app
from examples.accounts import USERS
from flask_tokenreq import Capability, TokenRequest, parse_key
from flask_tokenreq.testing import ManualClock, Recorder

SIGNING_SECRET = "seed-examples-signing-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TOKENREQ_* / FLASK_* settings from the outside environment."""
    import os

    for name in list(os.environ):
        if name.startswith(("TOKENREQ_", "FLASK_")) and not name.startswith("TOKENREQ_TEST"):
            monkeypatch.delenv(name)


def settings(key: str) -> dict[str, Any]:
    return {
        "TESTING": True,
        "SECRET_KEY": "seed-examples-session-key-0123456789abcdef",
        "TOKENREQ_KEY": key,
        "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
        "TOKENREQ_NONCE_STORE": "memory://",
    }


def signed_in(app: Flask, user: str) -> FlaskClient:
    client = app.test_client()
    response = client.post("/login", data={"username": user, "password": f"{user}-password"})
    assert response.status_code == 200, response.get_json()
    return client


def error_code(response: TestResponse, status: int) -> int:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    code: int = response.get_json()["error"]["code"]
    return code


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + base64.b64encode(token.encode()).decode()}


# -- Archiva ----------------------------------------------------------------------------


@pytest.fixture
def archiva(tokenreq_key: str, tokenreq_clock: ManualClock) -> Flask:
    return archiva_app.create_app(settings(tokenreq_key))


def test_archiva_route_gives_a_90_second_read_only_project_token(
    archiva: Flask, tokenreq_clock: ManualClock, tokenreq_recorder: Recorder
) -> None:
    alice = signed_in(archiva, "alice")
    response = alice.get("/api/archiva/token", query_string={"projectId": "p2"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    treq = response.get_json()
    assert (treq["ttl"], treq["capability"], treq["clientId"]) == (
        90_000,
        '{"project:p2":["history","subscribe"]}',
        "alice",
    )
    assert tokenreq_recorder.token_requests == [TokenRequest.from_dict(treq)]

    details = alice.post(f"/provider/keys/{treq['keyName']}/requestToken", json=treq).get_json()
    assert details["expires"] - details["issued"] == 90_000
    token = bearer(details["token"])
    events = alice.get("/provider/projects/p2/events", headers=token)
    assert events.get_json()["events"] == archiva_app.EVENTS["p2"]
    assert error_code(alice.get("/provider/projects/p1/events", headers=token), 401) == 40160
    assert error_code(alice.post("/provider/projects/p2/events", headers=token), 401) == 40160
    tokenreq_clock.advance(90_000 + 6_000)  # past expiry and the 5 s leeway
    assert error_code(alice.get("/provider/projects/p2/events", headers=token), 401) == 40142


@pytest.mark.parametrize(
    ("user", "query", "status", "code"),
    [
        (None, {"projectId": "p1"}, 401, 40100),  # no session
        ("alice", {}, 400, 40000),  # a token is for one project
        ("bob", {"projectId": "p2"}, 403, 40300),  # not bob's project
        ("alice", {"projectId": "p3"}, 403, 40300),  # nobody's project
        ("alice", {"projectId": "p1", "capability": '{"project:p1":["publish"]}'}, 403, 40160),
        ("alice", {"projectId": "p1", "ttl": 90_001}, 400, 40003),  # 90 s at most
        ("alice", {"projectId": "p1", "clientId": "bob"}, 403, 40102),
    ],
)
def test_archiva_route_gives_nothing_more(
    archiva: Flask,
    tokenreq_recorder: Recorder,
    user: str | None,
    query: dict[str, Any],
    status: int,
    code: int,
) -> None:
    client = archiva.test_client() if user is None else signed_in(archiva, user)
    assert error_code(client.get("/api/archiva/token", query_string=query), status) == code
    assert tokenreq_recorder.token_requests == []


def test_archiva_route_narrows_on_request(archiva: Flask) -> None:
    alice = signed_in(archiva, "alice")
    query = {"projectId": "p1", "ttl": 30_000, "capability": '{"project:p1":["history"]}'}
    treq = alice.get("/api/archiva/token", query_string=query).get_json()
    assert (treq["ttl"], treq["capability"]) == (30_000, '{"project:p1":["history"]}')


def test_archiva_pages(archiva: Flask) -> None:
    assert b'id="signin"' in archiva.test_client().get("/").data
    alice = signed_in(archiva, "alice")
    home = alice.get("/").get_data(as_text=True)
    assert 'href="/projects/p1"' in home
    assert 'href="/projects/p2"' in home
    page = alice.get("/projects/p1").get_data(as_text=True)
    assert "import { createTokenClient } from '/api/archiva/tokenreq.js'" in page
    assert "tokens.getToken()" in page
    assert 'data-project="p1"' in page
    hostile = alice.get("/projects/%22%3E%3Cscript%3Ealert(1)%3C").get_data(as_text=True)
    assert "<script>alert(1)" not in hostile
    assert alice.get("/api/archiva/tokenreq.js").status_code == 200


# -- Velt -------------------------------------------------------------------------------


@pytest.fixture
def velt(tokenreq_key: str, tokenreq_clock: ManualClock) -> Flask:
    return velt_app.create_app(settings(tokenreq_key))


def velt_token(client: FlaskClient, **kwargs: Any) -> TestResponse:
    kwargs.setdefault("headers", {"Accept": "application/json"})
    return client.post("/api/velt/token", query_string={"format": "jwt"}, **kwargs)


ALICE = {
    "userId": "alice",
    "organizationId": "org-1",
    "email": "alice@example.com",
    "name": "Alice",
    "isAdmin": True,
}


def test_velt_checks_the_session_before_anything(velt: Flask) -> None:
    anonymous = velt.test_client()
    pretend = {"userId": "alice", "organizationId": "org-1", "isAdmin": True}
    assert error_code(velt_token(anonymous, json=pretend), 401) == 40100
    assert error_code(velt_token(anonymous, data=b"{not json", content_type="x/y"), 401) == 40100


def test_velt_puts_the_users_properties_in_the_token(
    velt: Flask, tokenreq_key: str, tokenreq_clock: ManualClock
) -> None:
    response = velt_token(signed_in(velt, "alice"))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    answer = response.get_json()
    claims = jwt.decode(answer["token"], parse_key(tokenreq_key)[1], algorithms=["HS256"])
    assert {k: claims[k] for k in ALICE} == ALICE
    assert claims["x-ably-clientId"] == "alice"
    assert answer["expires"] == claims["exp"] * 1000
    assert answer["issued"] == claims["iat"] * 1000 == tokenreq_clock() // 1000 * 1000


def test_velt_never_reads_identity_from_the_body(velt: Flask, tokenreq_key: str) -> None:
    alice = signed_in(velt, "alice")
    forged = {
        "userId": "bob",
        "organizationId": "org-2",
        "email": "mallory@example.com",
        "name": "Mallory",
        "isAdmin": False,
    }
    for kwargs in ({"json": forged}, {"data": forged}):
        token = velt_token(alice, **kwargs).get_json()["token"]
        claims = jwt.decode(token, parse_key(tokenreq_key)[1], algorithms=["HS256"])
        assert {k: claims[k] for k in ALICE} == ALICE
    # Asking for someone else's clientId is refused, not granted.
    assert error_code(velt_token(alice, json={"clientId": "bob"}), 403) == 40102


def test_velt_api_reads_the_properties_from_the_token(velt: Flask) -> None:
    bob = signed_in(velt, "bob")
    token = bearer(velt_token(bob).get_json()["token"])
    read = bob.get("/api/documents/budget/comments", headers=token)
    assert read.status_code == 200
    assert read.get_json()["viewer"] == {"userId": "bob", "name": "Bob", "isAdmin": False}
    added = bob.post(
        "/api/documents/budget/comments",
        json={"text": "ship it", "author": "Alice", "email": "alice@example.com"},
        headers=token,
    )
    assert added.status_code == 201
    assert added.get_json() == {"text": "ship it", "author": "Bob", "email": "bob@example.com"}
    assert bob.get("/api/documents/budget/comments", headers=token).get_json()["comments"] == [
        added.get_json()
    ]
    # Another organization's document: refused by the organizationId claim.
    assert error_code(bob.get("/api/documents/roadmap/comments", headers=token), 403) == 40300
    assert error_code(bob.get("/api/documents/nothing/comments", headers=token), 404) == 40400
    bad = bob.post("/api/documents/budget/comments", json=["x"], headers=token)
    assert error_code(bad, 400) == 40000
    assert error_code(velt.test_client().get("/api/documents/roadmap/comments"), 401) == 40100


def test_velt_tokens_from_token_requests_carry_no_properties(velt: Flask) -> None:
    """Only the JWT has the claims: a token made from a TokenRequest cannot pass for one."""
    bob = signed_in(velt, "bob")
    treq = bob.get("/api/velt/token").get_json()
    exchanged = bob.post(f"/api/provider/keys/{treq['keyName']}/requestToken", json=treq)
    token = bearer(exchanged.get_json()["token"])
    response = bob.get("/api/documents/budget/comments", headers=token)
    assert error_code(response, 403) == 40300  # no organizationId claim


# -- the sign-in (examples/accounts.py), as the seed examples wire it -----------------------


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": {"username": "alice", "password": "wrong"}}, 401),
        ({"data": {"username": "nobody", "password": "alice-password"}}, 401),
        ({"json": {"username": "alice", "password": 1}}, 400),
        ({"json": ["alice"]}, 400),
        ({"data": b"x" * (70 * 1024), "content_type": "application/json"}, 413),
        ({"data": b"x" * (200 * 1024), "content_type": "application/json"}, 413),
        (
            {
                "data": {"username": "alice", "password": "alice-password"},
                "headers": {"Sec-Fetch-Site": "cross-site"},
            },
            403,
        ),
        (
            {
                "data": {"username": "alice", "password": "alice-password"},
                "headers": {"Origin": "https://evil.example"},
            },
            403,
        ),
    ],
)
def test_the_sign_in_refuses(velt: Flask, kwargs: dict[str, Any], status: int) -> None:
    client = velt.test_client()
    error_code(client.post("/login", **kwargs), status)
    assert velt_token(client).status_code == 401  # not signed in


def test_the_examples_read_their_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tokenreq_key: str
) -> None:
    monkeypatch.setenv("TOKENREQ_KEY", tokenreq_key)
    monkeypatch.setenv("TOKENREQ_TTL", "60000")
    monkeypatch.setenv("FLASK_SECRET_KEY", "from-the-environment-0123456789abcdef")
    app = archiva_app.create_app({"TOKENREQ_NONCE_STORE": "memory://"})
    assert app.config["TOKENREQ_KEY"] == tokenreq_key
    assert app.config["TOKENREQ_PROVIDER_KEYS"] == [tokenreq_key]
    assert app.config["TOKENREQ_TTL"] == 60_000
    assert app.config["SECRET_KEY"] == "from-the-environment-0123456789abcdef"
    assert Capability.parse(app.config["TOKENREQ_ISSUER_CAPABILITY"]) == Capability(
        {"project:*": ["subscribe", "history"]}
    )


# -- every demo user (examples/accounts.py) works in both ------------------------------


@pytest.mark.parametrize("user", sorted(USERS))
def test_every_demo_user_has_projects_and_properties(
    archiva: Flask, velt: Flask, tokenreq_key: str, user: str
) -> None:
    """A user added to accounts.py (carol) gets tokens, not a KeyError (500)."""
    client = signed_in(archiva, user)
    for project in ("p1", "p2"):
        response = client.get("/api/archiva/token", query_string={"projectId": project})
        if project in archiva_app.PROJECTS[user]:
            assert response.status_code == 200
            assert response.get_json()["clientId"] == user
        else:
            assert error_code(response, 403) == 40300
    token = velt_token(signed_in(velt, user)).get_json()["token"]
    claims = jwt.decode(token, parse_key(tokenreq_key)[1], algorithms=["HS256"])
    assert claims["userId"] == user
    assert claims["organizationId"] == velt_app.PROPERTIES[user]["organizationId"]
