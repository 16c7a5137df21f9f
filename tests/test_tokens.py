"""Keys and tokens: parsing ``TOKENREQ_PROVIDER_KEYS``, minting, and JWT attacks.

Forged tokens are built by hand (segments, JSON text and HMAC) so that the
tests can express what PyJWT would refuse to produce: duplicate members,
numeric strings, ``alg: none``, padding, HS256 keyed with a public key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from flask_tokenreq import Capability
from flask_tokenreq.errors import (
    ConfigError,
    InvalidCredentials,
    InvalidToken,
    KeyExpired,
    KeyRevoked,
    TokenExpired,
    TokenReqError,
    TokenRevoked,
)
from flask_tokenreq.keys import ApiKey, KeyStore, StaticKeyStore
from flask_tokenreq.provider import TokenProvider
from flask_tokenreq.stores import MemoryNonceStore
from flask_tokenreq.tokens import Identity, TokenService

from .conftest import KEY, KEY_NAME, OTHER_KEY, OTHER_SECRET, SECRET, FakeClock
from .test_provider import SIGNING_SECRET, post, sign

NOW = 1_700_000_000_000
T = NOW // 1000


# -- helpers -----------------------------------------------------------------------------


def b64url(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any] | str, payload: dict[str, Any] | str, key: bytes | None) -> str:
    """A compact JWS over the exact JSON text given, HS256 with ``key`` (or unsigned)."""
    h = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    p = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    signing_input = f"{b64url(h)}.{b64url(p)}"
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def claims(service: TokenService, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "iss": service.issuer,
        "iat": T,
        "nbf": T,
        "exp": T + 3600,
        "jti": "jti-0123456789abcdefghij",
        "keyName": KEY_NAME,
        "capability": '{"*":["*"]}',
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def our_header(service: TokenService, **overrides: Any) -> dict[str, Any]:
    out = {"alg": "HS256", "typ": "at+jwt", "kid": service.key_id}
    out.update(overrides)
    return out


def keystore(*keys: ApiKey) -> StaticKeyStore:
    return StaticKeyStore(keys or (ApiKey(KEY_NAME, SECRET), ApiKey("appid.other", OTHER_SECRET)))


@pytest.fixture
def service(clock: FakeClock) -> TokenService:
    return TokenService(secret=SIGNING_SECRET, now_ms=clock)


@pytest.fixture
def keys() -> StaticKeyStore:
    return keystore()


def mint(service: TokenService, clock: FakeClock, **kwargs: Any) -> str:
    kwargs.setdefault("key_name", KEY_NAME)
    kwargs.setdefault("capability", Capability.all())
    kwargs.setdefault("client_id", None)
    return service.mint(issued_ms=clock(), expires_ms=clock() + 60_000, **kwargs).token


def refused(service: TokenService, keys: KeyStore, token: str, code: int = 40144) -> str:
    with pytest.raises(TokenReqError) as info:
        service.verify(token, keys)
    assert info.value.code == code, info.value.message
    assert SIGNING_SECRET not in info.value.message
    assert SECRET not in info.value.message
    return info.value.message


# -- keys ------------------------------------------------------------------------------


def test_static_keys_from_config() -> None:
    store = StaticKeyStore.from_config(
        [
            KEY,
            {
                "key": OTHER_KEY,
                "capability": {"chat:*": ["subscribe"]},
                "revoked": True,
                "expires": 5,
            },
        ]
    )
    key = store.get(KEY_NAME)
    assert key is not None
    assert key.secret == SECRET
    assert key.capability == Capability({"[*]*": ["*"]})
    assert not key.revoked
    assert not key.expired(NOW)
    other = store.get("appid.other")
    assert other is not None
    assert other.capability == Capability({"chat:*": ["subscribe"]})
    assert other.revoked
    assert other.expired(5)
    assert not other.expired(4)
    assert store.get("appid.none") is None
    assert isinstance(store, KeyStore)
    assert len(store) == 2


def test_capability_given_as_json_text() -> None:
    store = StaticKeyStore.from_config([{"key": KEY, "capability": '{"a": ["publish"]}'}])
    key = store.get(KEY_NAME)
    assert key is not None
    assert key.capability == Capability({"a": ["publish"]})


def test_repr_never_shows_the_secret() -> None:
    store = StaticKeyStore.from_config([KEY])
    key = store.get(KEY_NAME)
    assert SECRET not in repr(key)
    assert SECRET not in str(key)
    assert SECRET not in repr(store)
    assert KEY_NAME in repr(key)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (KEY, "TOKENREQ_PROVIDER_KEYS"),
        ({"key": KEY}, "TOKENREQ_PROVIDER_KEYS"),
        (None, "TOKENREQ_PROVIDER_KEYS"),
        ([KEY, KEY], "TOKENREQ_PROVIDER_KEYS"),
        (["appid.keyid"], "TOKENREQ_PROVIDER_KEYS[0]"),
        ([f"{KEY} "], "TOKENREQ_PROVIDER_KEYS[0]"),
        ([5], "TOKENREQ_PROVIDER_KEYS[0]"),
        ([{"capability": {}}], "TOKENREQ_PROVIDER_KEYS[0].key"),
        ([{"key": KEY, "secret": "x"}], "TOKENREQ_PROVIDER_KEYS[0]"),
        ([{"key": KEY, "capability": "nope"}], "TOKENREQ_PROVIDER_KEYS[0].capability"),
        ([{"key": KEY, "capability": {}}], "TOKENREQ_PROVIDER_KEYS[0].capability"),
        ([{"key": KEY, "revoked": "yes"}], "TOKENREQ_PROVIDER_KEYS[0].revoked"),
        ([{"key": KEY, "expires": "tomorrow"}], "TOKENREQ_PROVIDER_KEYS[0].expires"),
        ([{"key": KEY, "expires": True}], "TOKENREQ_PROVIDER_KEYS[0].expires"),
    ],
)
def test_bad_key_config(value: Any, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        StaticKeyStore.from_config(value)
    assert where in str(info.value)
    assert SECRET not in str(info.value)


def test_key_status_errors() -> None:
    with pytest.raises(KeyRevoked):
        ApiKey(KEY_NAME, SECRET, status="revoked").check_active(NOW)
    with pytest.raises(KeyExpired):
        ApiKey(KEY_NAME, SECRET, expires_at_ms=NOW).check_active(NOW)
    ApiKey(KEY_NAME, SECRET, expires_at_ms=NOW + 1).check_active(NOW)


# -- minting and verifying -----------------------------------------------------------------


def test_round_trip(service: TokenService, keys: StaticKeyStore, clock: FakeClock) -> None:
    cap = Capability({"chat:*": ["publish", "subscribe"]})
    issued = service.mint(
        key_name=KEY_NAME,
        capability=cap,
        client_id="alice",
        issued_ms=clock(),
        expires_ms=clock() + 1500,
    )
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "HS256", "typ": "at+jwt", "kid": service.key_id}
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(payload) == {
        *("iss", "iat", "nbf", "exp", "issued", "jti", "keyName", "capability", "clientId")
    }
    assert payload["exp"] == T + 2  # rounded up to a whole second
    assert payload["issued"] == clock()  # the issue time in ms, as in TokenDetails
    assert len(base64.urlsafe_b64decode(payload["jti"] + "==")) == 16
    identity = service.verify(issued.token, keys)
    assert identity == Identity(
        key_name=KEY_NAME,
        client_id="alice",
        capability=cap,
        token_id=payload["jti"],
        issued_ms=clock(),
        expires_ms=(T + 2) * 1000,
        kind="token",
    )
    assert issued.token not in repr(issued)


@pytest.mark.parametrize("algorithm", ["HS256", "EdDSA", "ES256"])
def test_minted_token_is_what_jwt_encode_writes(clock: FakeClock, algorithm: str) -> None:
    """mint() signs with PyJWT's algorithm object itself: the token is byte for byte
    jwt.encode's for the same header and claims (ES256 signatures are randomised, so
    there the signed part is compared and the signature verified by PyJWT)."""
    private: Any = None
    if algorithm == "HS256":
        service = TokenService(secret=SIGNING_SECRET, now_ms=clock)
        signing_key: Any = SIGNING_SECRET.encode()
        verifying_key: Any = signing_key
    else:
        private = (
            ed25519.Ed25519PrivateKey.generate()
            if algorithm == "EdDSA"
            else ec.generate_private_key(ec.SECP256R1())
        )
        service = TokenService(algorithm=algorithm, private_key=_pem(private), now_ms=clock)
        signing_key, verifying_key = private, private.public_key()
    issued = service.mint(
        key_name=KEY_NAME,
        capability=Capability({"chat:\u00e9*": ["subscribe"], "status": ["*"]}),
        client_id="zo\u00eb",
        issued_ms=clock(),
        expires_ms=clock() + 60_000,
    )
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    expected = jwt.encode(
        payload,
        signing_key,
        algorithm=algorithm,
        headers={"typ": "at+jwt", "kid": service.key_id},
    )
    if algorithm == "ES256":
        assert issued.token.rsplit(".", 1)[0] == expected.rsplit(".", 1)[0]
    else:
        assert issued.token == expected
    decoded = jwt.decode(
        issued.token,
        verifying_key,
        algorithms=[algorithm],
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert decoded == payload


def test_jti_is_unique(service: TokenService, clock: FakeClock) -> None:
    tokens = {mint(service, clock) for _ in range(50)}
    ids = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(ids) == 50


def test_token_capability_is_narrowed_to_the_keys_current_capability(
    service: TokenService, clock: FakeClock
) -> None:
    token = mint(service, clock, capability=Capability({"chat:*": ["publish", "subscribe"]}))
    narrowed = keystore(ApiKey(KEY_NAME, SECRET, Capability({"chat:*": ["subscribe"]})))
    assert service.verify(token, narrowed).capability == Capability({"chat:*": ["subscribe"]})


def test_expiry_and_leeway(service: TokenService, keys: StaticKeyStore, clock: FakeClock) -> None:
    token = mint(service, clock)  # exp = now + 60 s
    clock.advance(60_000 + 4_999)
    service.verify(token, keys)
    clock.advance(1)
    refused(service, keys, token, 40142)


def test_leeway_is_configurable(keys: StaticKeyStore, clock: FakeClock) -> None:
    service = TokenService(secret=SIGNING_SECRET, leeway_s=0, now_ms=clock)
    token = mint(service, clock)
    clock.advance(60_000)
    with pytest.raises(TokenExpired):
        service.verify(token, keys)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signed", [False, True])
def test_alg_none_is_refused(
    service: TokenService, keys: StaticKeyStore, alg: str, signed: bool
) -> None:
    header = our_header(service, alg=alg)
    token = forge(header, claims(service), SIGNING_SECRET.encode() if signed else None)
    if not signed:
        refused(service, keys, token)
        refused(service, keys, token.rstrip("."))
        refused(service, keys, token + "AAAA")
    else:
        refused(service, keys, token)
    ably = forge(
        {"alg": alg, "typ": "JWT", "kid": KEY_NAME},
        {"iat": T, "exp": T + 60, "x-ably-capability": "{}"},
        None,
    )
    refused(service, keys, ably)


def test_hs256_keyed_with_the_public_key_is_refused(keys: StaticKeyStore, clock: FakeClock) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    service = TokenService(algorithm="EdDSA", private_key=pem, now_ms=clock)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_text = json.dumps(service.jwks()["keys"][0]).encode()
    for key in (public_pem, jwk_text, public_pem.strip()):
        token = forge(our_header(service, alg="HS256"), claims(service), key)
        refused(service, keys, token)
    assert service.verify(mint(service, clock), keys).key_name == KEY_NAME


@pytest.mark.parametrize(
    ("what", "overrides"),
    [
        ("missing exp", {"exp": None}),
        ("missing iat", {"iat": None}),
        ("missing jti", {"jti": None}),
        ("missing iss", {"iss": None}),
        ("missing keyName", {"keyName": None}),
        ("missing capability", {"capability": None}),
        ("wrong iss", {"iss": "someone-else"}),
        ("numeric-string exp", {"exp": str(T + 3600)}),
        ("numeric-string iat", {"iat": str(T)}),
        ("numeric-string nbf", {"nbf": str(T)}),
        ("bool exp", {"exp": True}),
        ("list exp", {"exp": [T + 3600]}),
        ("huge exp", {"exp": 1e400}),
        ("nbf in the future", {"nbf": T + 60}),
        ("iat in the future", {"iat": T + 60, "nbf": T}),
        ("exp before iat", {"exp": T - 1, "iat": T}),
        ("jti not a string", {"jti": 12345}),
        ("empty clientId", {"clientId": ""}),
        ("clientId not a string", {"clientId": 7}),
        ("capability not JSON", {"capability": "all"}),
        ("capability an object", {"capability": {"*": ["*"]}}),
        ("jti too long", {"jti": "j" * 300}),
    ],
)
def test_bad_claims_are_refused(
    service: TokenService, keys: StaticKeyStore, what: str, overrides: dict[str, Any]
) -> None:
    payload = claims(service)
    for name, value in overrides.items():
        if value is None:
            payload.pop(name)
        else:
            payload[name] = value
    token = forge(our_header(service), payload, SIGNING_SECRET.encode())
    refused(service, keys, token)


def test_nan_exp_is_refused(service: TokenService, keys: StaticKeyStore) -> None:
    payload = json.dumps(claims(service)).replace(f'"exp": {T + 3600}', '"exp": NaN')
    assert "NaN" in payload
    refused(service, keys, forge(our_header(service), payload, SIGNING_SECRET.encode()))


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_a_time_too_large_for_milliseconds_is_40144(
    service: TokenService, keys: StaticKeyStore, claim: str
) -> None:
    """Finite in seconds, infinite in milliseconds (1e306 * 1000): refused, never a 500."""
    token = forge(our_header(service), claims(service, **{claim: 1e306}), SIGNING_SECRET.encode())
    refused(service, keys, token)
    refused(service, keys, ably_jwt(**{claim: 1e306}))  # an Ably JWT signed with the key


def test_expired_token_is_40142(service: TokenService, keys: StaticKeyStore) -> None:
    token = forge(
        our_header(service),
        claims(service, iat=T - 7200, nbf=T - 7200, exp=T - 3600),
        SIGNING_SECRET.encode(),
    )
    refused(service, keys, token, 40142)


def test_expired_but_badly_signed_token_is_40144(
    service: TokenService, keys: StaticKeyStore
) -> None:
    token = forge(our_header(service), claims(service, exp=T - 3600, iat=T - 7200), b"x" * 32)
    refused(service, keys, token, 40144)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        # no typ, or typ JWT: routed as an Ably JWT, whose kid is not a key name
        ({"alg": "HS256", "kid": "x"}, 40101),
        ({"alg": "HS256", "typ": "JWT"}, 40101),
        ({"alg": "HS256", "typ": "jwt+at"}, 40144),
        ({"alg": "HS256", "typ": "at+JWT2"}, 40144),
        ({"alg": "HS512", "typ": "at+jwt"}, 40144),
        ({"alg": "EdDSA", "typ": "at+jwt"}, 40144),
        ({"alg": "HS256", "typ": "at+jwt", "kid": "another"}, 40144),
        ({"alg": "HS256", "typ": "at+jwt", "crit": ["exp"]}, 40144),
        ({"alg": "HS256", "typ": "at+jwt", "b64": False}, 40144),
        ({"alg": "HS256", "typ": 5}, 40144),
        ({"alg": ["HS256"], "typ": "at+jwt"}, 40144),
    ],
)
def test_bad_headers_are_refused(
    service: TokenService, keys: StaticKeyStore, header: dict[str, Any], code: int
) -> None:
    header = {"kid": service.key_id, **header}
    token = forge(header, claims(service), SIGNING_SECRET.encode())
    refused(service, keys, token, code)


def test_wrong_typ_on_a_genuine_token_is_refused(
    service: TokenService, keys: StaticKeyStore
) -> None:
    token = forge(our_header(service, typ="JWT"), claims(service), SIGNING_SECRET.encode())
    refused(service, keys, token, 40101)  # routed as an Ably JWT: kid is not a key name
    token = forge(
        our_header(service, typ="JWT", kid=KEY_NAME), claims(service), SIGNING_SECRET.encode()
    )
    refused(service, keys, token)


def test_tampered_payload_is_refused(
    service: TokenService, keys: StaticKeyStore, clock: FakeClock
) -> None:
    token = mint(service, clock, capability=Capability({"a": ["subscribe"]}))
    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    data["capability"] = '{"[*]*":["*"]}'
    refused(service, keys, f"{head}.{b64url(json.dumps(data))}.{sig}")
    data["capability"] = '{"a":["subscribe"]}'
    data["exp"] += 1
    refused(service, keys, f"{head}.{b64url(json.dumps(data))}.{sig}")
    refused(service, keys, f"{head}.{payload}.{sig[:-2]}")


def test_malleable_encodings_are_refused(
    service: TokenService, keys: StaticKeyStore, clock: FakeClock
) -> None:
    token = mint(service, clock)
    service.verify(token, keys)  # remembered: its variants must still be refused
    head, payload, sig = token.split(".")
    for bad in (
        token + "=",
        f"{head}.{payload}={'=' * (len(payload) % 2)}.{sig}",
        f"{head}.{payload}.{sig}.extra",
        f"{head}.{payload}",
        f" {token}",
        token.replace("-", "+").replace("_", "/")
        if ("-" in token or "_" in token)
        else token + "!",
        "",
        "a.b.c",
    ):
        refused(service, keys, bad)


def test_oversized_token_is_refused_before_decoding(keys: StaticKeyStore, clock: FakeClock) -> None:
    service = TokenService(secret=SIGNING_SECRET, max_token_bytes=1024, now_ms=clock)
    big = forge(our_header(service), claims(service, pad="x" * 2000), SIGNING_SECRET.encode())
    message = refused(service, keys, big)
    assert "larger" in message
    huge = "a" * 10_000_000 + ".b.c"
    refused(service, keys, huge)


@pytest.mark.parametrize(
    "payload",
    [
        '{"iss":"flask-tokenreq","iat":%d,"exp":%d,"jti":"j0123456789","keyName":"appid.keyid",'
        '"capability":"{\\"a\\":[\\"subscribe\\"]}","capability":"{\\"[*]*\\":[\\"*\\"]}"}',
        '{"iss":"flask-tokenreq","iat":%d,"exp":%d,"exp":9999999999,"jti":"j0123456789",'
        '"keyName":"appid.keyid","capability":"{}"}',
        '{"iss":"flask-tokenreq","iat":%d,"exp":%d,"jti":"j0123456789","keyName":"appid.other",'
        '"keyName":"appid.keyid","capability":"{}"}',
    ],
)
def test_duplicate_claims_are_refused(
    service: TokenService, keys: StaticKeyStore, payload: str
) -> None:
    text = payload % (T, T + 60)
    message = refused(service, keys, forge(our_header(service), text, SIGNING_SECRET.encode()))
    assert "duplicate" in message


def test_duplicate_header_members_are_refused(service: TokenService, keys: StaticKeyStore) -> None:
    header = f'{{"alg":"none","typ":"at+jwt","kid":"{service.key_id}","alg":"HS256"}}'
    message = refused(service, keys, forge(header, claims(service), SIGNING_SECRET.encode()))
    assert "duplicate" in message


def test_nested_duplicates_are_refused(service: TokenService, keys: StaticKeyStore) -> None:
    payload = json.dumps(claims(service))[:-1] + ',"extra":{"a":1,"a":2}}'
    refused(service, keys, forge(our_header(service), payload, SIGNING_SECRET.encode()))


def test_token_signed_with_another_secret_is_refused(
    keys: StaticKeyStore, clock: FakeClock
) -> None:
    other = TokenService(secret="another-signing-secret-0123456789abcdef", now_ms=clock)
    service = TokenService(secret=SIGNING_SECRET, key_id=other.key_id, now_ms=clock)
    refused(service, keys, mint(other, clock))


def test_removed_revoked_and_expired_keys(service: TokenService, clock: FakeClock) -> None:
    token = mint(service, clock)
    refused(service, keystore(ApiKey("appid.other", OTHER_SECRET)), token, 40101)
    refused(service, keystore(ApiKey(KEY_NAME, SECRET, status="revoked")), token, 40141)
    refused(service, keystore(ApiKey(KEY_NAME, SECRET, expires_at_ms=clock())), token, 40132)


def test_non_string_token(service: TokenService, keys: StaticKeyStore) -> None:
    refused(service, keys, b"a.b.c")  # type: ignore[arg-type]


# -- Ably JWTs -------------------------------------------------------------------------------


NO_CAPABILITY: dict[str, Any] = {"x-ably-capability": None}


def ably_jwt(key: str = KEY, **payload: Any) -> str:
    key_name, _, secret = key.partition(":")
    body: dict[str, Any] = {"iat": T, "exp": T + 3600, "x-ably-capability": '{"*":["*"]}'}
    body.update(payload)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm="HS256", headers={"kid": key_name})


def test_ably_jwt_is_accepted(service: TokenService, keys: StaticKeyStore) -> None:
    token = ably_jwt(**{"x-ably-clientId": "carol", "jti": "abc"})
    assert jwt.get_unverified_header(token)["typ"] == "JWT"
    identity = service.verify(token, keys)
    assert identity == Identity(
        key_name=KEY_NAME,
        client_id="carol",
        capability=Capability({"*": ["*"]}),
        token_id="abc",
        issued_ms=T * 1000,
        expires_ms=(T + 3600) * 1000,
        kind="ably-jwt",
    )


def test_ably_jwt_capability_is_intersected_with_the_key(
    service: TokenService, keys: StaticKeyStore
) -> None:
    token = ably_jwt(OTHER_KEY, **{"x-ably-capability": '{"chat:room":["publish","subscribe"]}'})
    narrowed = keystore(ApiKey("appid.other", OTHER_SECRET, Capability({"chat:*": ["subscribe"]})))
    identity = service.verify(token, narrowed)
    assert identity.capability == Capability({"chat:room": ["subscribe"]})


def test_ably_jwt_without_typ_is_accepted(service: TokenService, keys: StaticKeyStore) -> None:
    payload = {"iat": T, "exp": T + 60, "x-ably-capability": "{}"}
    token = forge({"alg": "HS256", "kid": KEY_NAME}, payload, SECRET.encode())
    assert service.verify(token, keys).kind == "ably-jwt"


@pytest.mark.parametrize(
    ("token_factory", "code"),
    [
        (lambda: ably_jwt("appid.keyid:" + OTHER_SECRET), 40144),  # wrong secret
        (lambda: ably_jwt("appid.nobody:" + SECRET), 40101),  # unknown key
        (lambda: ably_jwt(**NO_CAPABILITY), 40144),
        (lambda: ably_jwt(**{"x-ably-capability": "nope"}), 40144),
        (lambda: ably_jwt(**{"x-ably-clientId": ""}), 40144),
        (lambda: ably_jwt(exp=None), 40144),
        (lambda: ably_jwt(iat=None), 40144),
        (lambda: ably_jwt(exp=str(T + 60)), 40144),
        (lambda: ably_jwt(exp=T - 60, iat=T - 120), 40142),
        (lambda: ably_jwt(exp=T + 86_401), 40144),  # lifetime over TOKENREQ_MAX_TTL
        (lambda: ably_jwt(nbf=T + 600), 40144),
        (
            lambda: jwt.encode(
                {"iat": T, "exp": T + 60, "x-ably-capability": "{}"},
                SECRET,
                "HS512",
                headers={"kid": KEY_NAME},
            ),
            40144,
        ),
        (
            lambda: jwt.encode(
                {"iat": T, "exp": T + 60, "x-ably-capability": "{}"}, SECRET, "HS256"
            ),
            40144,
        ),
    ],
)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_bad_ably_jwts(
    service: TokenService, keys: StaticKeyStore, token_factory: Any, code: int
) -> None:
    refused(service, keys, token_factory(), code)


def test_ably_jwt_of_revoked_key(service: TokenService) -> None:
    token = ably_jwt()
    refused(service, keystore(ApiKey(KEY_NAME, SECRET, status="revoked")), token, 40141)


# -- asymmetric signing ------------------------------------------------------------------------


def _pem(private: Any) -> str:
    data: bytes = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data.decode()


@pytest.mark.parametrize(
    ("algorithm", "private"),
    [
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_asymmetric_tokens_and_jwks_endpoint(
    clock: FakeClock, algorithm: str, private: Any
) -> None:
    from flask import Flask

    app = Flask(__name__)
    app.config.update(
        TOKENREQ_PROVIDER_KEYS=[KEY],
        TOKENREQ_TOKEN_ALGORITHM=algorithm,
        TOKENREQ_SIGNING_KEY=_pem(private),
    )
    TokenProvider(app, nonces=MemoryNonceStore(now_ms=clock, warn=False), now_ms=clock)
    client = app.test_client()
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    jwks = response.get_json()
    assert len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    assert jwk["kid"]
    assert "d" not in jwk  # never the private part
    details = post(client, sign(clock, client_id="dan")).get_json()
    token = details["token"]
    header = jwt.get_unverified_header(token)
    assert header == {"alg": algorithm, "typ": "at+jwt", "kid": jwk["kid"]}
    public = jwt.PyJWK(jwk).key
    decoded = jwt.decode(
        token,
        public,
        algorithms=[algorithm],
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert decoded["clientId"] == "dan"


def test_algorithm_is_inferred_from_the_key(clock: FakeClock) -> None:
    from flask_tokenreq.tokens import TokenService as TS

    assert (
        TS.from_config(
            {"TOKENREQ_SIGNING_KEY": _pem(ed25519.Ed25519PrivateKey.generate())}
        ).algorithm
        == "EdDSA"
    )
    assert (
        TS.from_config(
            {"TOKENREQ_SIGNING_KEY": _pem(ec.generate_private_key(ec.SECP256R1()))}
        ).algorithm
        == "ES256"
    )


def test_escaped_newlines_and_file_path(tmp_path: Any, clock: FakeClock) -> None:
    pem = _pem(ed25519.Ed25519PrivateKey.generate())
    escaped = pem.replace("\n", "\\n")
    assert TokenService(algorithm="EdDSA", private_key=escaped).asymmetric
    path = tmp_path / "signing.pem"
    path.write_text(pem)
    assert TokenService(algorithm="EdDSA", private_key=str(path)).asymmetric


def test_hs256_has_no_jwks() -> None:
    from .test_provider import make_app

    app, _ = make_app(FakeClock())
    response = app.test_client().get("/.well-known/jwks.json")
    assert response.status_code == 404
    assert response.headers["X-Ably-ErrorCode"] == "40400"
    assert TokenService(secret=SIGNING_SECRET).jwks() == {"keys": []}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": "x" * 31}, "TOKENREQ_SIGNING_SECRET"),
        ({"secret": None}, "TOKENREQ_SIGNING_SECRET"),
        ({"algorithm": "RS256", "secret": SIGNING_SECRET}, "TOKENREQ_TOKEN_ALGORITHM"),
        ({"algorithm": "EdDSA", "private_key": "not a pem"}, "TOKENREQ_SIGNING_KEY"),
        (
            {"algorithm": "EdDSA", "private_key": _pem(ec.generate_private_key(ec.SECP256R1()))},
            "Ed25519",
        ),
        (
            {"algorithm": "ES256", "private_key": _pem(ed25519.Ed25519PrivateKey.generate())},
            "P-256",
        ),
        (
            {"algorithm": "ES256", "private_key": _pem(ec.generate_private_key(ec.SECP384R1()))},
            "P-256",
        ),
        (
            {"algorithm": "ES256", "private_key": _pem(rsa.generate_private_key(65537, 2048))},
            "P-256",
        ),
    ],
)
def test_bad_signing_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TokenService(**kwargs)
    assert SIGNING_SECRET not in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)


def test_service_repr_hides_secrets(service: TokenService) -> None:
    assert SIGNING_SECRET not in repr(service)


def test_errors_are_the_documented_classes(service: TokenService, keys: StaticKeyStore) -> None:
    with pytest.raises(InvalidToken):
        service.verify("x.y.z", keys)
    with pytest.raises(InvalidCredentials):
        service.verify(ably_jwt("appid.nobody:" + SECRET), keys)


# -- the verified-token cache ------------------------------------------------------------------


def test_a_remembered_token_still_gets_every_check(
    service: TokenService, keys: StaticKeyStore, clock: FakeClock
) -> None:
    cap = Capability({"chat:*": ["publish", "subscribe"]})
    token = mint(service, clock, capability=cap, client_id="alice")
    first = service.verify(token, keys)
    assert service.verify(token, keys) == first
    narrowed = keystore(ApiKey(KEY_NAME, SECRET, Capability({"chat:*": ["subscribe"]})))
    assert service.verify(token, narrowed).capability == Capability({"chat:*": ["subscribe"]})
    assert service.verify(token, keys).capability == cap  # widened again
    refused(service, keystore(ApiKey("appid.other", OTHER_SECRET)), token, 40101)
    refused(service, keystore(ApiKey(KEY_NAME, SECRET, status="revoked")), token, 40141)
    refused(service, keystore(ApiKey(KEY_NAME, SECRET, expires_at_ms=clock())), token, 40132)
    with pytest.raises(TokenRevoked):
        service.verify(token, keys, revoked=lambda identity: identity.client_id == "alice")
    assert service.verify(token, keys, revoked=lambda identity: False) == first
    clock.advance(60_000 + 5_000)
    refused(service, keys, token, 40142)


def test_the_cache_holds_digests_not_tokens(
    service: TokenService, keys: StaticKeyStore, clock: FakeClock
) -> None:
    tokens = [mint(service, clock, client_id=f"user-{i}") for i in range(3)]
    for token in tokens:
        service.verify(token, keys)
    cache = service._verified
    assert len(cache) == 3
    assert all(isinstance(k, bytes) and len(k) == 32 for k in cache)
    text = repr(cache)
    for token in tokens:
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature
    assert SIGNING_SECRET not in text


def test_the_cache_is_bounded(keys: StaticKeyStore, clock: FakeClock) -> None:
    service = TokenService(secret=SIGNING_SECRET, now_ms=clock)
    service._verified_size = 5
    tokens = [mint(service, clock, client_id=f"user-{i}") for i in range(12)]
    for token in tokens:
        service.verify(token, keys)
        assert len(service._verified) <= 5
    for token in tokens:  # evicted or not, every token still verifies
        assert service.verify(token, keys).key_name == KEY_NAME


def test_the_cache_belongs_to_one_service(keys: StaticKeyStore, clock: FakeClock) -> None:
    """A token one service verified is not trusted by another with another secret."""
    first = TokenService(secret=SIGNING_SECRET, now_ms=clock)
    token = mint(first, clock)
    first.verify(token, keys)
    second = TokenService(
        secret="another-signing-secret-0123456789abcdef", key_id=first.key_id, now_ms=clock
    )
    refused(second, keys, token)


def test_ably_jwts_are_not_remembered(service: TokenService, clock: FakeClock) -> None:
    """An Ably JWT depends on its key's secret, which can change: verified every time."""
    token = ably_jwt()
    assert service.verify(token, keystore()).kind == "ably-jwt"
    assert service._verified == {}
    rotated = keystore(ApiKey(KEY_NAME, "rotated-secret-0123456789abcdef0123456789"))
    refused(service, rotated, token)
