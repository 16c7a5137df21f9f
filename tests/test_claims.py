"""User properties in tokens: ``@issuer.claims_loader`` -> Ably JWT -> ``g.tokenreq.claims``.

The issuer puts the loader's claims at the top level of the Ably JWTs it
makes (``format=jwt``), refuses reserved claims by name, and answers JSON
TokenDetails instead of ``application/jwt`` to a client that prefers JSON.
The provider verifies the JWT and shows those claims, read-only, on the
request's identity. Apps run on the plugin's ``tokenreq_clock``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from flask import Flask, g
from flask.testing import FlaskClient
from flask_login import FlaskLoginClient, LoginManager, UserMixin

from flask_tokenreq import TokenIssuer, TokenProvider, TokenRequest, parse_key
from flask_tokenreq.testing import ManualClock, Recorder
from flask_tokenreq.tokens import RESERVED_CLAIMS, reserved_claim

SIGNING_SECRET = "claims-test-signing-secret-0123456789abcdef"
TOKEN = "/tokenreq/token"
#: username -> the claims the loader returns for that user
CLAIMS: dict[str, Any] = {
    "alice": {
        "organizationId": "org-1",
        "email": "alice@example.com",
        "isAdmin": True,
        "teams": ["red", "blue"],
        "profile": {"name": "Alice", "seats": 3},
    },
    "bob": None,  # no properties
}


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def users_claims(user: User) -> Any:
    return CLAIMS[user.id]


def make_app(key: str, loader: Any = users_claims) -> tuple[Flask, TokenIssuer]:
    """Issuer at /tokenreq and provider at the root, one key, a guarded view."""
    app = Flask("claims")
    app.config.update(
        TESTING=True,
        SECRET_KEY="claims-test-session-key-0123456789abcdef",
        TOKENREQ_KEY=key,
        TOKENREQ_ISSUER_CAPABILITY={"*": ["subscribe", "history"]},
        TOKENREQ_PROVIDER_KEYS=[key],
        TOKENREQ_SIGNING_SECRET=SIGNING_SECRET,
        TOKENREQ_NONCE_STORE="memory://",
    )
    app.test_client_class = FlaskLoginClient
    LoginManager(app).user_loader(User)
    issuer = TokenIssuer(app)
    if loader is not None:
        issuer.claims_loader(loader)
    provider = TokenProvider(app)

    @app.get("/whoami")
    @provider.require("history", "news")
    def whoami() -> dict[str, Any]:
        identity = g.tokenreq
        return {
            "kind": identity.kind,
            "clientId": identity.client_id,
            "claims": dict(identity.claims),
        }

    return app, issuer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + base64.b64encode(token.encode()).decode()}


def ably_jwt(client: FlaskClient, **query: Any) -> str:
    response = client.get(TOKEN, query_string={"format": "jwt", **query})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/jwt"
    return response.get_data(as_text=True)


def payload(token: str, key: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, parse_key(key)[1], algorithms=["HS256"])
    return claims


@pytest.fixture
def app(tokenreq_key: str, tokenreq_clock: ManualClock) -> Flask:
    return make_app(tokenreq_key)[0]


@pytest.fixture
def alice(app: Flask) -> FlaskClient:
    return app.test_client(user=User("alice"))


# -- issuer: claims in the Ably JWT ------------------------------------------------------


def test_the_users_claims_are_top_level_claims_of_the_jwt(
    alice: FlaskClient, tokenreq_key: str, tokenreq_clock: ManualClock
) -> None:
    token = ably_jwt(alice, ttl=120_000)
    assert jwt.get_unverified_header(token)["kid"] == parse_key(tokenreq_key)[0]
    iat = tokenreq_clock() // 1000
    assert payload(token, tokenreq_key) == {
        **CLAIMS["alice"],
        "iat": iat,
        "exp": iat + 120,
        "x-ably-capability": '{"*":["history","subscribe"]}',
        "x-ably-clientId": "alice",
    }


def test_a_loader_returning_none_adds_no_claims(app: Flask, tokenreq_key: str) -> None:
    bob = app.test_client(user=User("bob"))
    assert set(payload(ably_jwt(bob), tokenreq_key)) == {
        "iat",
        "exp",
        "x-ably-capability",
        "x-ably-clientId",
    }


def test_the_loader_gets_the_signed_in_user_and_only_for_jwts(
    tokenreq_key: str, tokenreq_clock: ManualClock, tokenreq_recorder: Recorder
) -> None:
    calls: list[str] = []

    def loader(user: User) -> Mapping[str, Any]:
        calls.append(user.id)
        return {"plan": "pro"}

    app, _ = make_app(tokenreq_key, loader)
    alice = app.test_client(user=User("alice"))
    treq = alice.get(TOKEN).get_json()
    assert set(treq) == {"keyName", "ttl", "capability", "clientId", "timestamp", "nonce", "mac"}
    assert tokenreq_recorder.token_requests == [TokenRequest.from_dict(treq)]
    assert calls == []  # a TokenRequest carries no claims
    assert payload(ably_jwt(alice), tokenreq_key)["plan"] == "pro"
    assert calls == ["alice"]


@pytest.mark.parametrize(
    "name",
    [*sorted(RESERVED_CLAIMS), "x-ably-capability", "x-ably-clientId", "X-Ably-Revocation-Key"],
)
def test_a_reserved_claim_is_an_error_naming_it(
    name: str, tokenreq_key: str, tokenreq_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(tokenreq_key, lambda user: {"email": "a@example.com", name: "forged"})
    with caplog.at_level(logging.ERROR):
        response = app.test_client(user=User("alice")).get(TOKEN, query_string={"format": "jwt"})
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == 50000
    assert f"reserved claim {name!r}" in error["message"]
    assert repr(name) in caplog.text
    assert parse_key(tokenreq_key)[1] not in response.get_data(as_text=True)


def test_reserved_claims_are_the_registered_ones_and_every_x_ably_claim() -> None:
    assert {"exp", "iat", "nbf", "iss", "jti", "kid"} == RESERVED_CLAIMS
    for name in ("x-ably-anything", "X-ABLY-CAPABILITY", "iat"):
        assert reserved_claim(name)
    for name in ("email", "sub", "x-ablyish", "ably", "Exp"):
        assert not reserved_claim(name)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (["email"], "must return a mapping"),
        ({1: "one"}, "claim name that is not a string"),
        ({"": "empty"}, "claim name that is not a string"),
        ({"when": object()}, "not JSON"),
        ({"ratio": float("nan")}, "not JSON"),
    ],
)
def test_a_malformed_loader_answer_is_a_500(
    claims: Any, message: str, tokenreq_key: str, tokenreq_clock: ManualClock
) -> None:
    app, _ = make_app(tokenreq_key, lambda user: claims)
    response = app.test_client(user=User("alice")).get(TOKEN, query_string={"format": "jwt"})
    assert response.status_code == 500
    assert message in response.get_json()["error"]["message"]


# -- issuer: the JSON variant -------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "application/json, text/plain",  # what ably-js's authUrl sends
        "application/jwt;q=0.5, application/json",
    ],
)
def test_a_client_preferring_json_gets_token_details(
    alice: FlaskClient, tokenreq_key: str, accept: str
) -> None:
    response = alice.get(
        TOKEN, query_string={"format": "jwt", "ttl": 90_000}, headers={"Accept": accept}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Accept" in response.headers["Vary"]
    details = response.get_json()
    claims = payload(details["token"], tokenreq_key)
    # {"token", "expires"}, plus what makes it TokenDetails for ably-js ("issued").
    assert details == {
        "token": details["token"],
        "expires": claims["exp"] * 1000,
        "issued": claims["iat"] * 1000,
        "capability": '{"*":["history","subscribe"]}',
        "clientId": "alice",
    }
    assert claims["exp"] - claims["iat"] == 90
    assert claims["organizationId"] == "org-1"


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/jwt", "application/json, application/jwt", "text/html"],
)
def test_otherwise_the_jwt_is_the_body(alice: FlaskClient, accept: str | None) -> None:
    headers = {} if accept is None else {"Accept": accept}
    response = alice.get(TOKEN, query_string={"format": "jwt"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/jwt"
    assert "Accept" in response.headers["Vary"]
    assert response.get_data(as_text=True).count(".") == 2


def test_json_variant_without_client_id(tokenreq_key: str, tokenreq_clock: ManualClock) -> None:
    app, issuer = make_app(tokenreq_key)
    issuer.client_id_loader(lambda user: None)
    response = app.test_client(user=User("bob")).get(
        TOKEN, query_string={"format": "jwt"}, headers={"Accept": "application/json"}
    )
    assert set(response.get_json()) == {"token", "expires", "issued", "capability"}


# -- provider: g.tokenreq.claims ------------------------------------------------------------


def test_claims_travel_from_issuer_to_a_guarded_view(alice: FlaskClient) -> None:
    for token in (
        ably_jwt(alice),
        alice.get(
            TOKEN, query_string={"format": "jwt"}, headers={"Accept": "application/json"}
        ).get_json()["token"],
    ):
        response = alice.get("/whoami", headers=bearer(token))
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {
            "kind": "ably-jwt",
            "clientId": "alice",
            "claims": CLAIMS["alice"],
        }


def test_claims_are_read_only(app: Flask, alice: FlaskClient) -> None:
    token = ably_jwt(alice)
    provider: TokenProvider = app.extensions["tokenreq_provider"]
    with app.app_context():
        identity = provider.verify_token(token)
        again = provider.verify_token(token)
    assert dict(identity.claims) == CLAIMS["alice"]
    with pytest.raises(TypeError):
        identity.claims["isAdmin"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        del identity.claims["email"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        identity.claims = {}  # type: ignore[misc]
    assert identity == again
    assert hash(identity) == hash(again)


def test_tokens_from_token_requests_and_key_auth_have_no_claims(
    app: Flask, alice: FlaskClient, tokenreq_key: str
) -> None:
    treq = alice.get(TOKEN).get_json()
    details = alice.post(f"/keys/{treq['keyName']}/requestToken", json=treq).get_json()
    response = alice.get("/whoami", headers=bearer(details["token"]))
    assert response.get_json() == {"kind": "token", "clientId": "alice", "claims": {}}

    basic = {"Authorization": "Basic " + base64.b64encode(tokenreq_key.encode()).decode()}
    assert alice.get("/whoami", headers=basic).get_json()["claims"] == {}


def test_a_forged_claim_fails_the_signature(alice: FlaskClient) -> None:
    header, body, signature = ably_jwt(alice).split(".")
    claims = jwt.utils.base64url_decode(body)
    forged = claims.replace(b'"isAdmin":true', b'"isAdmin":1   ')
    assert forged != claims
    token = f"{header}.{jwt.utils.base64url_encode(forged).decode()}.{signature}"
    response = alice.get("/whoami", headers=bearer(token))
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == 40144
