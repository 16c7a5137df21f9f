"""Rotating the provider's token-signing key, and the token revocation hook.

Rotation works like Flask's ``SECRET_KEY_FALLBACKS``: new tokens are signed
with the current key; a token signed with a key listed in
``TOKENREQ_SIGNING_SECRET_FALLBACKS`` / ``TOKENREQ_SIGNING_KEY_FALLBACKS``
verifies until it expires; once the key leaves the list, its tokens are
refused (40144). A "config change" is a new app built from the new config,
as a deploy would do, sharing one injected clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask, g
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from flask_tokenreq import Capability
from flask_tokenreq.errors import ConfigError, TokenReqError
from flask_tokenreq.keys import ApiKey, StaticKeyStore
from flask_tokenreq.keys.base import GraceSecret
from flask_tokenreq.provider import TokenProvider
from flask_tokenreq.stores import MemoryNonceStore
from flask_tokenreq.tokens import Identity, TokenService

from .conftest import KEY, KEY_NAME, SECRET, FakeClock
from .test_provider import assert_error, post, sign

SECRET_A = "token-signing-secret-A-0123456789abcdef0123456789"
SECRET_B = "token-signing-secret-B-fedcba9876543210fedcba9876"
SECRETS = (SECRET, SECRET_A, SECRET_B)
#: PyJWT options for decoding tokens made at the fake clock's time.
LATE = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}


# -- helpers -----------------------------------------------------------------------------


def b64url(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """A compact JWS made by hand: HS256 with ``key``, whatever ``header`` says."""
    signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(payload))}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    t = clock() // 1000
    out: dict[str, Any] = {
        "iss": "flask-tokenreq",
        "iat": t,
        "nbf": t,
        "exp": t + 600,
        "jti": "jti-0123456789abcdefghij",
        "keyName": KEY_NAME,
        "capability": '{"*":["*"]}',
    }
    out.update(overrides)
    return out


def private_pem(private: Any) -> str:
    data: bytes = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data.decode()


def public_pem(private: Any) -> str:
    data: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


def new_private(algorithm: str) -> Any:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def keystore() -> StaticKeyStore:
    return StaticKeyStore([ApiKey(KEY_NAME, SECRET)])


def refused(service: TokenService, token: str, code: int, keys: Any = None, **kw: Any) -> str:
    with pytest.raises(TokenReqError) as info:
        service.verify(token, keys or keystore(), **kw)
    assert info.value.code == code, info.value.message
    for secret in SECRETS:
        assert secret not in info.value.message
    return info.value.message


def mint(service: TokenService, clock: FakeClock, ttl_ms: int = 600_000) -> str:
    return service.mint(
        key_name=KEY_NAME,
        capability=Capability.all(),
        client_id="alice",
        issued_ms=clock(),
        expires_ms=clock() + ttl_ms,
    ).token


def kid(token: str) -> str:
    value = jwt.get_unverified_header(token)["kid"]
    assert isinstance(value, str)
    return value


class SecretCheckingClient(FlaskClient):
    """Fails the test when a response shows one of the secrets."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        text = response.get_data() + str(response.headers).encode()
        for secret in SECRETS:
            assert secret.encode() not in text
        assert b"PRIVATE KEY" not in text
        return response


def provider_app(clock: FakeClock, **config: Any) -> Flask:
    """A provider app with a guarded route, from ``config`` (one deploy)."""
    app = Flask(__name__)
    app.test_client_class = SecretCheckingClient
    app.config.update(TESTING=True, TOKENREQ_PROVIDER_KEYS=[KEY])
    app.config.update(config)
    provider = TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)

    @app.get("/whoami")
    @provider.require("subscribe", "news")
    def whoami() -> dict[str, Any]:
        identity: Identity = g.tokenreq
        return {"keyName": identity.key_name, "clientId": identity.client_id}

    return app


def exchange(app: Flask, clock: FakeClock) -> str:
    response = post(app.test_client(), sign(clock, client_id="alice"))
    assert response.status_code == 200, response.get_data(as_text=True)
    token = response.get_json()["token"]
    assert isinstance(token, str)
    return token


def whoami(app: Flask, token: str) -> TestResponse:
    # As Ably SDKs send it: standard base64 of the token.
    bearer = base64.b64encode(token.encode()).decode()
    return app.test_client().get("/whoami", headers={"Authorization": f"Bearer {bearer}"})


# -- HS256 rotation ----------------------------------------------------------------------


def test_hs256_rotation_with_the_token_service(clock: FakeClock) -> None:
    before = TokenService(secret=SECRET_A, now_ms=clock)
    old = mint(before, clock)
    assert kid(old) == before.key_id

    during = TokenService(secret=SECRET_B, secret_fallbacks=[SECRET_A], now_ms=clock)
    assert during.key_id != before.key_id
    assert during.key_ids == (during.key_id, before.key_id)
    assert during.verify(old, keystore()).client_id == "alice"
    new = mint(during, clock)
    assert kid(new) == during.key_id
    assert jwt.get_unverified_header(new) == {
        "alg": "HS256",
        "typ": "at+jwt",
        "kid": during.key_id,
    }
    # The new token is signed with B, never with the fallback.
    assert jwt.decode(new, SECRET_B, algorithms=["HS256"], options=LATE)["clientId"] == "alice"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(new, SECRET_A, algorithms=["HS256"], options=LATE)
    assert during.jwks() == {"keys": []}

    after = TokenService(secret=SECRET_B, now_ms=clock)
    assert after.key_id == during.key_id
    assert "kid" in refused(after, old, 40144)
    assert after.verify(new, keystore()).client_id == "alice"


def test_a_fallback_token_verifies_until_it_expires(clock: FakeClock) -> None:
    old = mint(TokenService(secret=SECRET_A, now_ms=clock), clock, ttl_ms=60_000)
    during = TokenService(secret=SECRET_B, secret_fallbacks=[SECRET_A], leeway_s=0, now_ms=clock)
    clock.advance(59_999)
    assert during.verify(old, keystore()).key_name == KEY_NAME
    clock.advance(1)
    refused(during, old, 40142)


def test_hs256_rotation_through_the_provider(clock: FakeClock) -> None:
    app_a = provider_app(clock, TOKENREQ_SIGNING_SECRET=SECRET_A)
    old = exchange(app_a, clock)
    assert whoami(app_a, old).get_json() == {"keyName": KEY_NAME, "clientId": "alice"}

    app_b = provider_app(
        clock, TOKENREQ_SIGNING_SECRET=SECRET_B, TOKENREQ_SIGNING_SECRET_FALLBACKS=[SECRET_A]
    )
    assert whoami(app_b, old).get_json() == {"keyName": KEY_NAME, "clientId": "alice"}
    new = exchange(app_b, clock)
    assert kid(new) == TokenService(secret=SECRET_B).key_id
    assert kid(new) != kid(old)
    assert app_b.test_client().get("/.well-known/jwks.json").status_code == 404

    app_c = provider_app(clock, TOKENREQ_SIGNING_SECRET=SECRET_B)
    assert_error(whoami(app_c, old), 401, 40144)
    assert whoami(app_c, new).status_code == 200
    # The token the old deploy minted cannot be made to verify by the new one alone.
    assert_error(whoami(app_a, new), 401, 40144)


def test_fallbacks_from_the_environment(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    old = mint(TokenService(secret=SECRET_A, now_ms=clock), clock)
    monkeypatch.setenv("TOKENREQ_SIGNING_SECRET_FALLBACKS", json.dumps([SECRET_A]))
    service = TokenService.from_config({"TOKENREQ_SIGNING_SECRET": SECRET_B}, now_ms=clock)
    assert service.verify(old, keystore()).client_id == "alice"


# -- EdDSA / ES256 rotation ---------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
@pytest.mark.parametrize("fallback_form", ["private", "public", "path"])
def test_asymmetric_rotation_through_the_provider(
    clock: FakeClock, tmp_path: Path, algorithm: str, fallback_form: str
) -> None:
    key_a, key_b = new_private(algorithm), new_private(algorithm)
    app_a = provider_app(clock, TOKENREQ_SIGNING_KEY=private_pem(key_a))
    old = exchange(app_a, clock)
    jwks_a = app_a.test_client().get("/.well-known/jwks.json").get_json()
    assert [k["kid"] for k in jwks_a["keys"]] == [kid(old)]

    fallback = {"private": private_pem(key_a), "public": public_pem(key_a)}.get(fallback_form)
    if fallback is None:
        path = tmp_path / "old-signing-key.pem"
        path.write_text(public_pem(key_a))
        fallback = str(path)
    app_b = provider_app(
        clock,
        TOKENREQ_SIGNING_KEY=private_pem(key_b),
        TOKENREQ_SIGNING_KEY_FALLBACKS=[fallback],
    )
    assert whoami(app_b, old).get_json() == {"keyName": KEY_NAME, "clientId": "alice"}
    new = exchange(app_b, clock)
    assert jwt.get_unverified_header(new)["alg"] == algorithm
    assert kid(new) != kid(old)

    response = app_b.test_client().get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.get_json()["keys"]
    assert [k["kid"] for k in keys] == [kid(new), kid(old)]  # the current key first
    for jwk in keys:
        assert jwk["alg"] == algorithm
        assert jwk["use"] == "sig"
        assert "d" not in jwk
    # Another service verifies both tokens with the JWKS alone.
    by_kid = {k["kid"]: jwt.PyJWK(k).key for k in keys}
    for token in (old, new):
        decoded = jwt.decode(
            token,
            by_kid[kid(token)],
            algorithms=[algorithm],
            options=LATE,
        )
        assert decoded["clientId"] == "alice"

    app_c = provider_app(clock, TOKENREQ_SIGNING_KEY=private_pem(key_b))
    assert_error(whoami(app_c, old), 401, 40144)
    assert whoami(app_c, new).status_code == 200
    assert [
        k["kid"] for k in app_c.test_client().get("/.well-known/jwks.json").get_json()["keys"]
    ] == [kid(new)]


def test_migration_from_hs256_to_eddsa(clock: FakeClock) -> None:
    """Old HS256 tokens keep working while the new key is EdDSA; the JWKS shows only Ed."""
    old = mint(TokenService(secret=SECRET_A, now_ms=clock), clock)
    private = ed25519.Ed25519PrivateKey.generate()
    service = TokenService(
        algorithm="EdDSA",
        private_key=private_pem(private),
        secret_fallbacks=[SECRET_A],
        now_ms=clock,
    )
    assert service.verify(old, keystore()).client_id == "alice"
    new = mint(service, clock)
    assert jwt.get_unverified_header(new)["alg"] == "EdDSA"
    assert service.verify(new, keystore()).client_id == "alice"
    assert [k["kid"] for k in service.jwks()["keys"]] == [service.key_id]


def test_jwks_serves_an_asymmetric_fallback_after_moving_to_hs256(clock: FakeClock) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    before = TokenService(algorithm="ES256", private_key=private_pem(private), now_ms=clock)
    old = mint(before, clock)
    after = TokenService(secret=SECRET_B, key_fallbacks=[public_pem(private)], now_ms=clock)
    assert after.asymmetric
    assert after.jwks() == before.jwks()
    assert after.verify(old, keystore()).client_id == "alice"
    assert jwt.get_unverified_header(mint(after, clock))["alg"] == "HS256"


# -- what a kid may and may not do -------------------------------------------------------------


def test_unknown_kid_is_refused(clock: FakeClock) -> None:
    service = TokenService(secret=SECRET_B, secret_fallbacks=[SECRET_A], now_ms=clock)
    for unknown in ("nope", "", TokenService(secret=SECRET + "-x").key_id):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": unknown}
        refused(service, hs256(header, claims(clock), SECRET_B.encode()), 40144)
    for not_a_string in (None, 5, [service.key_id], {"a": 1}):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": not_a_string}
        refused(service, hs256(header, claims(clock), SECRET_B.encode()), 40144)
    header = {"alg": "HS256", "typ": "at+jwt"}
    refused(service, hs256(header, claims(clock), SECRET_B.encode()), 40144)


def test_fallback_kid_with_the_current_keys_signature_is_refused(clock: FakeClock) -> None:
    old_kid = TokenService(secret=SECRET_A).key_id
    service = TokenService(secret=SECRET_B, secret_fallbacks=[SECRET_A], now_ms=clock)
    fallback_header = {"alg": "HS256", "typ": "at+jwt", "kid": old_kid}
    current_header = {"alg": "HS256", "typ": "at+jwt", "kid": service.key_id}
    refused(service, hs256(fallback_header, claims(clock), SECRET_B.encode()), 40144)
    refused(service, hs256(current_header, claims(clock), SECRET_A.encode()), 40144)
    # Each under its own kid verifies.
    assert service.verify(hs256(fallback_header, claims(clock), SECRET_A.encode()), keystore())
    assert service.verify(hs256(current_header, claims(clock), SECRET_B.encode()), keystore())


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
def test_no_algorithm_confusion_across_fallbacks(clock: FakeClock, algorithm: str) -> None:
    """Asymmetric current key, HS256 fallback secret: each kid accepts its own alg only."""
    private = new_private(algorithm)
    service = TokenService(
        algorithm=algorithm,
        private_key=private_pem(private),
        secret_fallbacks=[SECRET_A],
        now_ms=clock,
    )
    hs_kid = TokenService(secret=SECRET_A).key_id
    assert service.key_ids == (service.key_id, hs_kid)
    public = public_pem(private).encode()
    jwk_text = json.dumps(service.jwks()["keys"][0]).encode()
    body = claims(clock)
    # HS256 under the asymmetric kid, keyed with anything public or with the fallback secret.
    for key in (public, public.strip(), jwk_text, SECRET_A.encode()):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": service.key_id}
        refused(service, hs256(header, body, key), 40144)
    # The HS256 fallback's kid keyed with the public key.
    for key in (public, jwk_text):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": hs_kid}
        refused(service, hs256(header, body, key), 40144)
    # A genuine asymmetric signature presented under the HS256 fallback's kid.
    forged = jwt.encode(
        body, private, algorithm=algorithm, headers={"kid": hs_kid, "typ": "at+jwt"}
    )
    refused(service, forged, 40144)
    # The asymmetric alg claimed under the HS256 kid with an HMAC signature.
    header = {"alg": algorithm, "typ": "at+jwt", "kid": hs_kid}
    refused(service, hs256(header, body, SECRET_A.encode()), 40144)
    # The legitimate forms still verify.
    header = {"alg": "HS256", "typ": "at+jwt", "kid": hs_kid}
    assert service.verify(hs256(header, body, SECRET_A.encode()), keystore()).key_name == KEY_NAME
    assert service.verify(mint(service, clock), keystore()).key_name == KEY_NAME


def test_no_algorithm_confusion_with_an_asymmetric_fallback(clock: FakeClock) -> None:
    """HS256 current secret, EdDSA fallback: the Ed kid accepts EdDSA only."""
    private = ed25519.Ed25519PrivateKey.generate()
    service = TokenService(secret=SECRET_B, key_fallbacks=[public_pem(private)], now_ms=clock)
    ed_kid = service.key_ids[1]
    body = claims(clock)
    for key in (public_pem(private).encode(), SECRET_B.encode()):
        refused(service, hs256({"alg": "HS256", "typ": "at+jwt", "kid": ed_kid}, body, key), 40144)
    good = jwt.encode(body, private, algorithm="EdDSA", headers={"kid": ed_kid, "typ": "at+jwt"})
    assert service.verify(good, keystore()).key_name == KEY_NAME
    forged = jwt.encode(
        body, private, algorithm="EdDSA", headers={"kid": service.key_id, "typ": "at+jwt"}
    )
    refused(service, forged, 40144)


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting", ["TOKENREQ_SIGNING_SECRET_FALLBACKS", "TOKENREQ_SIGNING_KEY_FALLBACKS"]
)
def test_a_bare_string_is_not_a_list_of_fallbacks(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    config = {"TOKENREQ_SIGNING_SECRET": SECRET_B, setting: SECRET_A}
    with pytest.raises(ConfigError, match=setting) as info:
        TokenService.from_config(config)
    assert SECRET_A not in str(info.value)
    with pytest.raises(ConfigError, match=setting):
        provider_app(clock, **config)
    monkeypatch.setenv(setting, json.dumps(SECRET_A))
    with pytest.raises(ConfigError, match=setting):
        TokenService.from_config({"TOKENREQ_SIGNING_SECRET": SECRET_B})
    keyword = "secret_fallbacks" if "SECRET" in setting else "key_fallbacks"
    with pytest.raises(ConfigError, match=setting):
        TokenService(secret=SECRET_B, **{keyword: SECRET_A})


@pytest.mark.parametrize(
    ("fallbacks", "where"),
    [
        (["x" * 31], "TOKENREQ_SIGNING_SECRET_FALLBACKS[0] is too short"),
        ([SECRET_A, "short"], "TOKENREQ_SIGNING_SECRET_FALLBACKS[1] is too short"),
        ([SECRET_A, ""], "TOKENREQ_SIGNING_SECRET_FALLBACKS[1]"),
        ([5], "TOKENREQ_SIGNING_SECRET_FALLBACKS"),
        ([public_pem(ed25519.Ed25519PrivateKey.generate())], "FALLBACKS[0] looks like a PEM"),
    ],
)
def test_bad_secret_fallbacks(fallbacks: list[Any], where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")) as info:
        TokenService.from_config(
            {"TOKENREQ_SIGNING_SECRET": SECRET_B, "TOKENREQ_SIGNING_SECRET_FALLBACKS": fallbacks}
        )
    assert SECRET_A not in str(info.value)
    assert SECRET_B not in str(info.value)


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        ("not a pem", r"TOKENREQ_SIGNING_KEY_FALLBACKS\[0\] is not a PEM"),
        (private_pem(rsa.generate_private_key(65537, 2048)), "Ed25519.*P-256"),
        (public_pem(ec.generate_private_key(ec.SECP384R1())), "Ed25519.*P-256"),
    ],
)
def test_bad_key_fallbacks(fallback: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TokenService(secret=SECRET_B, key_fallbacks=[fallback])
    assert "PRIVATE KEY" not in str(info.value)


def test_the_current_key_listed_as_a_fallback_is_harmless(clock: FakeClock) -> None:
    service = TokenService(secret=SECRET_B, secret_fallbacks=[SECRET_B, SECRET_A, SECRET_A])
    assert service.key_ids == (service.key_id, TokenService(secret=SECRET_A).key_id)
    private = ed25519.Ed25519PrivateKey.generate()
    asym = TokenService(
        algorithm="EdDSA", private_key=private_pem(private), key_fallbacks=[public_pem(private)]
    )
    assert len(asym.jwks()["keys"]) == 1


def test_a_custom_kid_may_not_name_a_fallback() -> None:
    taken = TokenService(secret=SECRET_A).key_id
    with pytest.raises(ConfigError, match="TOKENREQ_SIGNING_KEY_ID"):
        TokenService(secret=SECRET_B, key_id=taken, secret_fallbacks=[SECRET_A])


# -- the revocation hook ----------------------------------------------------------------------


def test_revocation_hook(clock: FakeClock) -> None:
    service = TokenService(secret=SECRET_B, now_ms=clock)
    token = mint(service, clock)
    seen: list[Identity] = []

    def revoked(identity: Identity) -> bool:
        seen.append(identity)
        return identity.client_id == "alice"

    message = refused(service, token, 40141, revoked=revoked)
    assert "revoked" in message.lower()
    refused(service, token, 40141, revoked=revoked)  # every verification asks again
    assert [i.token_id for i in seen] == [
        jwt.decode(token, SECRET_B, ["HS256"], options=LATE)["jti"]
    ] * 2
    assert seen[0].key_name == KEY_NAME
    assert service.verify(token, keystore(), revoked=lambda identity: False).client_id == "alice"
    assert service.verify(token, keystore()).client_id == "alice"  # no hook: nothing revoked


def test_revocation_hook_runs_after_every_other_check(clock: FakeClock) -> None:
    service = TokenService(secret=SECRET_B, now_ms=clock)
    calls: list[Identity] = []

    def revoked(identity: Identity) -> bool:
        calls.append(identity)
        return True

    token = mint(service, clock, ttl_ms=1000)
    refused(service, token[:-2], 40144, revoked=revoked)
    clock.advance(60_000)
    refused(service, token, 40142, revoked=revoked)
    assert calls == []


def test_revocation_hook_applies_to_ably_jwts(clock: FakeClock) -> None:
    service = TokenService(secret=SECRET_B, now_ms=clock)
    t = clock() // 1000
    token = jwt.encode(
        {"iat": t, "exp": t + 60, "x-ably-capability": "{}", "x-ably-clientId": "bob"},
        SECRET,
        algorithm="HS256",
        headers={"kid": KEY_NAME},
    )
    refused(service, token, 40141, revoked=lambda identity: identity.client_id == "bob")
    assert service.verify(token, keystore(), revoked=lambda identity: False).kind == "ably-jwt"


def test_tokens_of_a_revoked_key_are_40141_of_an_expired_key_40132(clock: FakeClock) -> None:
    app = provider_app(clock, TOKENREQ_SIGNING_SECRET=SECRET_B)
    token = exchange(app, clock)
    revoked = provider_app(
        clock,
        TOKENREQ_SIGNING_SECRET=SECRET_B,
        TOKENREQ_PROVIDER_KEYS=[{"key": KEY, "revoked": True}],
    )
    assert_error(whoami(revoked, token), 401, 40141)
    expired = provider_app(
        clock,
        TOKENREQ_SIGNING_SECRET=SECRET_B,
        TOKENREQ_PROVIDER_KEYS=[{"key": KEY, "expires": clock()}],
    )
    assert_error(whoami(expired, token), 401, 40132)
    # The key itself (Basic auth, exchange) is still 40131 when revoked.
    basic = base64.b64encode(KEY.encode()).decode()
    response = revoked.test_client().get("/whoami", headers={"Authorization": f"Basic {basic}"})
    assert_error(response, 401, 40131)


# -- Ably JWTs of a rotated API key ---------------------------------------------------------------


def test_ably_jwt_signed_with_a_secret_in_its_rotation_grace(clock: FakeClock) -> None:
    """An API key's previous secret verifies Ably JWTs until its grace ends, as for MACs."""
    service = TokenService(secret=SECRET_B, now_ms=clock)
    t = clock() // 1000
    body = {"iat": t, "exp": t + 3600, "x-ably-capability": '{"*":["*"]}'}
    old = jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": KEY_NAME})
    new = jwt.encode(body, SECRET_A, algorithm="HS256", headers={"kid": KEY_NAME})
    rotated = StaticKeyStore(
        [ApiKey(KEY_NAME, SECRET_A, previous_secrets=(GraceSecret(SECRET, clock() + 60_000),))]
    )
    assert service.verify(new, rotated).kind == "ably-jwt"
    assert service.verify(old, rotated).kind == "ably-jwt"
    clock.advance(60_001)
    refused(service, old, 40144, keys=rotated)
    assert service.verify(new, rotated).kind == "ably-jwt"
