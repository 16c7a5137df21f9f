"""Minting and verifying the provider's access tokens (JWTs, with PyJWT).

A token is a JWT with header ``{"alg", "typ": "at+jwt", "kid"}`` and claims
``iss``, ``iat``, ``nbf``, ``exp`` (seconds), ``issued`` (the issue time in
milliseconds, as in TokenDetails: token revocation compares it with
``issuedBefore``), ``jti`` (128 random bits), ``keyName``, ``capability``
(canonical text) and ``clientId`` when set.
HS256 with a shared secret by default; EdDSA or ES256 with a PEM private key,
whose public half :meth:`TokenService.jwks` publishes.

The signing key can be rotated the way Flask rotates ``SECRET_KEY``: new
tokens are signed with the current key; keys listed in
``TOKENREQ_SIGNING_SECRET_FALLBACKS`` (HS256 secrets) and
``TOKENREQ_SIGNING_KEY_FALLBACKS`` (EdDSA/ES256 PEM keys) still verify the
tokens they signed until those expire. Every key has its own ``kid`` and its
own algorithm: a token's ``kid`` picks the one key that may verify it, and the
token's ``alg`` must be that key's.

Verification follows RFC 8725: the algorithm is pinned (never read from the
token), the size is checked before decoding, header and payload are parsed
with duplicate keys refused, ``typ`` is checked, ``exp``/``iat``/``jti``/``iss``
are required and must be numbers/strings as the RFC says (a numeric string
``exp`` is refused), and time is checked against the injected clock with a
leeway. PyJWT does none of those strict checks (docs/provider.md), so they are
done here; signatures are made and checked by PyJWT's algorithm objects (a
minted token is byte for byte what :func:`jwt.encode` writes for the same
header and claims). Ably JWTs (``typ`` ``JWT``, ``kid``
= key name, HS256 with that key's secret) are accepted too. A token never
grants more than its key grants now, and every token of a revoked key is
refused (40141). A key store that offers ``status(key_name)`` (managed keys)
is asked for that, not for the key's secrets, on the token path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from . import settings
from .capability import Capability, InvalidCapability
from .clock import Clock, now_ms
from .errors import (
    ConfigError,
    InvalidCredentials,
    InvalidToken,
    KeyRevoked,
    TokenExpired,
    TokenRevoked,
)
from .keys.base import KeyStore, KeyView, check_active

#: Algorithms the provider can sign its tokens with.
ALGORITHMS = ("HS256", "EdDSA", "ES256")
#: The ``typ`` header of the provider's tokens (RFC 9068).
TOKEN_TYPE = "at+jwt"
#: Shortest HS256 signing secret accepted, in bytes (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32
#: Defaults of the constructor: the registry's (:mod:`flask_tokenreq.settings`).
DEFAULT_ISSUER: str = settings.SETTINGS["TOKENREQ_TOKEN_ISSUER"].default
DEFAULT_LEEWAY_S: int = settings.SETTINGS["TOKENREQ_LEEWAY"].default
DEFAULT_MAX_TOKEN_BYTES: int = settings.SETTINGS["TOKENREQ_MAX_TOKEN_BYTES"].default
DEFAULT_MAX_TTL_MS: int = settings.SETTINGS["TOKENREQ_MAX_TTL"].default

TokenKind = Literal["token", "ably-jwt", "basic"]

#: Claims of an Ably JWT that say what the token is: never a user's property.
#: (So are all claims starting with ``x-ably-``, compared without case.)
RESERVED_CLAIMS = frozenset({"exp", "iat", "nbf", "iss", "jti", "kid"})
_RESERVED_PREFIX = "x-ably-"
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def reserved_claim(name: str) -> bool:
    """Whether ``name`` is a claim an app may not set in an Ably JWT (:data:`RESERVED_CLAIMS`)."""
    return name in RESERVED_CLAIMS or name.lower().startswith(_RESERVED_PREFIX)


def _no_claims() -> Mapping[str, Any]:
    return _NO_CLAIMS


_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_OUR_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_ABLY_TYPES = frozenset({"jwt", "application/jwt"})
_MAX_ID_CHARS = 256
_ALL_CANONICAL = Capability.all().canonical
_ALGORITHM_OBJECTS = jwt.algorithms.get_default_algorithms()
_HS256 = _ALGORITHM_OBJECTS["HS256"]
#: The claim ``revokeTokens`` targets of type ``revocationKey`` match (Ably's name).
REVOCATION_KEY_CLAIM = "x-ably-revocation-key"
#: Bounds of a TokenService's verified-token cache (entries; characters per token).
_VERIFIED_CACHE_SIZE = 4096
_VERIFIED_MAX_CHARS = 2048


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified request is: stored in ``flask.g.tokenreq`` by ``require()``."""

    key_name: str
    client_id: str | None
    capability: Capability
    token_id: str | None = None
    #: When the token was issued, in ms: exact for the provider's tokens (their
    #: ``issued`` claim), the start of the ``iat`` second for Ably JWTs.
    issued_ms: int | None = None
    expires_ms: int | None = None
    #: ``basic``: the key itself (``Basic`` auth, or ``Bearer`` with a managed key).
    kind: TokenKind = "token"
    #: The user's properties an Ably JWT carries as top-level claims (the
    #: issuer's ``@claims_loader``), read-only; empty for other credentials.
    claims: Mapping[str, Any] = field(default_factory=_no_claims, hash=False)
    #: The token's ``x-ably-revocation-key`` claim (``revokeTokens`` targets it).
    revocation_key: str | None = None


#: ``revoked=`` of :meth:`TokenService.verify`: whether a verified token has
#: been revoked (True: refused with 40141).
RevocationCheck = Callable[[Identity], bool]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly minted token and its details. ``repr`` hides the token."""

    token: str = field(repr=False)
    key_name: str
    client_id: str | None
    capability: Capability
    token_id: str
    issued_ms: int
    expires_ms: int

    def token_details(self) -> dict[str, Any]:
        """Ably TokenDetails: ``{token, keyName, issued, expires, capability, clientId}``."""
        out: dict[str, Any] = {
            "token": self.token,
            "keyName": self.key_name,
            "issued": self.issued_ms,
            "expires": self.expires_ms,
            "capability": self.capability.canonical,
        }
        if self.client_id is not None:
            out["clientId"] = self.client_id
        return out


# -- strict JSON -----------------------------------------------------------------------


class _Malformed(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Malformed(f"duplicate member {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _strict_segment(segment: str, what: str) -> dict[str, Any]:
    """Decode one base64url JSON-object segment, refusing duplicate keys."""
    if len(segment) % 4 == 1:
        raise InvalidToken(f"token {what} is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = _DECODER.decode(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidToken(f"token {what} is not valid base64url JSON") from None
    except _Malformed as exc:
        raise InvalidToken(f"token {what} is malformed: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"token {what} must be a JSON object")
    return value


def _signature_bytes(segment: str) -> bytes:
    """Decode the signature segment; non-canonical base64url is refused (no malleability)."""
    if len(segment) % 4 == 1:
        raise InvalidToken("token signature is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("token signature is not valid base64url") from None
    if _b64url(raw) != segment:
        raise InvalidToken("token signature is not canonical base64url")
    return raw


def _check_signature(
    signing_input: bytes, signature_segment: str, algorithm: str, keys: Iterable[Any]
) -> None:
    """Verify with PyJWT's object for the pinned ``algorithm``, under any of ``keys``.

    ``keys`` are prepared verifying keys of that one algorithm: the key a
    ``kid`` names, or the current and still-valid secrets of one API key.
    """
    signature = _signature_bytes(signature_segment)
    verifier = _ALGORITHM_OBJECTS[algorithm]
    for key in keys:
        try:
            if verifier.verify(signing_input, key, signature):
                return
        except (jwt.PyJWTError, ValueError, TypeError):
            pass
    raise InvalidToken("token signature does not verify")


# -- claims ----------------------------------------------------------------------------


def _seconds(payload: Mapping[str, Any], name: str) -> int | None:
    """A NumericDate claim in ms, ``None`` when absent.

    Strings (even numeric ones), booleans and non-finite numbers are refused.
    """
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"token {name} claim must be a number of seconds")
    millis = value * 1000
    if isinstance(millis, float) and not math.isfinite(millis):  # inf, NaN, or 1e306 * 1000
        raise InvalidToken(f"token {name} claim must be a finite number")
    return int(millis)


def _required_seconds(payload: Mapping[str, Any], name: str) -> int:
    value = _seconds(payload, name)
    if value is None:
        raise InvalidToken(f"token has no {name} claim")
    return value


def _string(payload: Mapping[str, Any], name: str) -> str | None:
    """A non-empty string claim, ``None`` when absent."""
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"token {name} claim must be a non-empty string")
    return value


def _required_string(payload: Mapping[str, Any], name: str) -> str:
    value = _string(payload, name)
    if value is None:
        raise InvalidToken(f"token has no {name} claim")
    return value


@dataclass(slots=True)
class _Verified:
    """One of our tokens whose header and signature verified: a cache entry.

    Holds the token's claims (no secret, not the token) and, in one tuple so
    that threads always read a matching pair, the key capability text it was
    last narrowed against and the result.
    """

    payload: Mapping[str, Any]
    narrowed: tuple[str, Capability] | None = None


def _capability_claim(text: str, key: KeyView, what: str) -> Capability:
    """The token's capability narrowed to what its key grants now."""
    try:
        token_capability = Capability.parse(text)
    except InvalidCapability:
        raise InvalidToken(f"token {what} claim is not a valid capability") from None
    if key.capability.canonical == _ALL_CANONICAL:
        return token_capability
    return token_capability.intersect(key.capability)


def _check_key(
    key: KeyView,
    now: int,
    client_id: str | None,
    revocation_key: str | None,
    issued_ms: int,
) -> None:
    """The key that made a token must be active (revoked 40141, expired 40132), and the
    token not revoked with ``revokeTokens`` (40141).

    The status check is the keys' own (:func:`~flask_tokenreq.keys.base.check_active`);
    only the code changes, since for a token the key's revocation revokes the token.
    Token revocations are the key view's own too: a view with a ``revokes`` method
    (managed keys' :class:`~flask_tokenreq.keys.sql.KeyState`) decides from the same
    snapshot that gave its status.
    """
    try:
        check_active(key, now)
    except KeyRevoked:
        raise TokenRevoked(
            f"Token revoked: the key {key.key_name!r} that issued it has been revoked"
        ) from None
    revokes = getattr(key, "revokes", None)
    if revokes is not None and revokes(client_id, revocation_key, issued_ms, now):
        raise TokenRevoked(
            "Token revoked: tokens of this clientId or revocation key issued before a "
            "revokeTokens call are refused; get a new token"
        )


def _issued_ms(payload: Mapping[str, Any], iat_ms: int) -> int:
    """The ``issued`` claim (ms), which must fall in the ``iat`` second; ``iat`` without it.

    Tokens minted before the claim existed are taken as issued at the start of
    their ``iat`` second (for token revocation: the conservative side).
    """
    value = payload.get("issued")
    if value is None:
        return iat_ms
    if type(value) is not int or value // 1000 * 1000 != iat_ms:
        raise InvalidToken("token issued claim must be the issue time in ms, within its iat second")
    return value


def _key_view(keys: KeyStore, key_name: str) -> KeyView | None:
    """What the token guard needs about ``key_name``: ``keys.status()`` when the store
    has it (no secret read), else ``keys.get()``."""
    status = getattr(keys, "status", None)
    if status is not None:
        return cast("KeyView | None", status(key_name))
    return keys.get(key_name)


# -- signing keys ----------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x")
    text = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(text.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class _VerifyingKey:
    """One key that verifies tokens: its ``kid``, its one algorithm, its public JWK."""

    kid: str
    algorithm: str
    #: Prepared for PyJWT's algorithm object: HS256 secret bytes or a public key.
    key: Any = field(repr=False)
    #: The public JWK (EdDSA/ES256), ``None`` for HS256.
    jwk: Mapping[str, Any] | None = None


def _hs256_secret(secret: object, setting: str) -> bytes:
    """Validate an HS256 signing secret; returns its bytes."""
    if secret is None or secret in ("", b""):
        raise ConfigError(
            f"{setting} is not set: HS256 tokens need a secret of at least "
            f"{MIN_SECRET_BYTES} bytes (e.g. secrets.token_urlsafe(32))"
        )
    if not isinstance(secret, (str, bytes)):
        raise ConfigError(f"{setting} must be a string")
    raw = secret.encode("utf-8") if isinstance(secret, str) else secret
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{setting} is too short: at least {MIN_SECRET_BYTES} bytes are required for HS256"
        )
    try:
        _HS256.prepare_key(raw)
    except jwt.InvalidKeyError:
        raise ConfigError(
            f"{setting} looks like a PEM, DER or SSH key: use a random secret for HS256, "
            "or TOKENREQ_SIGNING_KEY for EdDSA/ES256"
        ) from None
    return raw


def _hs256_key(raw: bytes) -> _VerifyingKey:
    """An HS256 key; its ``kid`` is derived from the secret and reveals nothing of it."""
    derived = hmac.new(raw, b"flask-tokenreq key id", hashlib.sha256).digest()
    return _VerifyingKey("hs-" + _b64url(derived[:12]), "HS256", _HS256.prepare_key(raw))


def _pem_bytes(value: object, setting: str) -> bytes:
    """PEM given as text (``\\n`` escapes allowed, as in an env var), bytes or a file path."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{setting} must be a PEM key (text) or a path to one")
    text = value.strip()
    if "-----BEGIN" not in text and os.path.isfile(text):
        with open(text, "rb") as handle:
            return handle.read()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    return text.encode("utf-8")


def _load_key(value: object, setting: str, *, public: bool = False) -> Any:
    """Load a PEM key given as text, bytes or a file path.

    A private key (unencrypted); with ``public``, the public key of a PEM
    public or private key.
    """
    data = _pem_bytes(value, setting)
    try:
        if not public or b"PRIVATE KEY-----" in data:
            private = serialization.load_pem_private_key(data, password=None)
            return private.public_key() if public else private
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        kind = "public or private key" if public else "private key"
        raise ConfigError(
            f"{setting} is not a PEM {kind} without a password (or a path to one)"
        ) from None
    except Exception:  # cryptography's UnsupportedAlgorithm and friends
        raise ConfigError(f"{setting} holds an unsupported kind of key") from None


def _asymmetric_algorithm(public_key: Any) -> str | None:
    """``EdDSA`` for Ed25519/Ed448, ``ES256`` for P-256, else ``None``."""
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "EdDSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return "ES256"
    return None


def _asymmetric_key(public_key: Any, algorithm: str) -> _VerifyingKey:
    """A verifying key for EdDSA/ES256; its ``kid`` is the JWK thumbprint."""
    jwk: dict[str, Any]
    if algorithm == "EdDSA":
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    kid = _thumbprint(jwk)
    jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    return _VerifyingKey(kid, algorithm, public_key, jwk)


def _fallback_keys(
    secret_fallbacks: Iterable[str | bytes], key_fallbacks: Iterable[str | bytes]
) -> list[_VerifyingKey]:
    """Verifying keys for the fallback settings, in the order given."""
    for value, setting in (
        (secret_fallbacks, "TOKENREQ_SIGNING_SECRET_FALLBACKS"),
        (key_fallbacks, "TOKENREQ_SIGNING_KEY_FALLBACKS"),
    ):
        if isinstance(value, (str, bytes)):
            raise ConfigError(f"{setting} must be a list, not a single string (wrap it in a list)")
    out = [
        _hs256_key(_hs256_secret(secret, f"TOKENREQ_SIGNING_SECRET_FALLBACKS[{index}]"))
        for index, secret in enumerate(secret_fallbacks)
    ]
    for index, pem in enumerate(key_fallbacks):
        setting = f"TOKENREQ_SIGNING_KEY_FALLBACKS[{index}]"
        public_key = _load_key(pem, setting, public=True)
        algorithm = _asymmetric_algorithm(public_key)
        if algorithm is None:
            raise ConfigError(f"{setting} must be an Ed25519 (EdDSA) or P-256 (ES256) key")
        out.append(_asymmetric_key(public_key, algorithm))
    return out


# -- the service -----------------------------------------------------------------------


class TokenService:
    """Mints and verifies the provider's tokens. Build once per app; thread-safe.

    ``secret_fallbacks`` (HS256 secrets) and ``key_fallbacks`` (EdDSA/ES256
    PEM keys, private or public) are former signing keys: they sign nothing,
    and verify the tokens they signed until those expire.
    """

    def __init__(
        self,
        *,
        algorithm: str = "HS256",
        secret: str | bytes | None = None,
        private_key: str | bytes | None = None,
        secret_fallbacks: Iterable[str | bytes] = (),
        key_fallbacks: Iterable[str | bytes] = (),
        issuer: str = DEFAULT_ISSUER,
        key_id: str | None = None,
        leeway_s: int = DEFAULT_LEEWAY_S,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        max_ttl_ms: int = DEFAULT_MAX_TTL_MS,
        now_ms: Clock = now_ms,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigError(
                f"TOKENREQ_TOKEN_ALGORITHM must be one of {', '.join(ALGORITHMS)}, "
                f"got {algorithm!r}"
            )
        if not isinstance(issuer, str) or not issuer:
            raise ConfigError("TOKENREQ_TOKEN_ISSUER must be a non-empty string")
        self.algorithm = algorithm
        self.issuer = issuer
        self.leeway_ms = leeway_s * 1000
        self.max_token_bytes = max_token_bytes
        self.max_ttl_ms = max_ttl_ms
        self._now = now_ms
        #: SHA-256 of a token -> its verified claims; see :meth:`verify`.
        self._verified: dict[bytes, _Verified] = {}
        self._verified_size = _VERIFIED_CACHE_SIZE
        #: What :meth:`mint` signs with: HS256 secret bytes or a private key.
        self._signing_key: Any
        current: _VerifyingKey
        if algorithm == "HS256":
            self._signing_key = _hs256_secret(secret, "TOKENREQ_SIGNING_SECRET")
            current = _hs256_key(self._signing_key)
        else:
            if private_key is None or private_key == "":
                raise ConfigError(
                    f"TOKENREQ_SIGNING_KEY is not set: {algorithm} tokens need a PEM private key"
                )
            self._signing_key = _load_key(private_key, "TOKENREQ_SIGNING_KEY")
            public_key = self._signing_key.public_key()
            if _asymmetric_algorithm(public_key) != algorithm:
                raise ConfigError(
                    "TOKENREQ_SIGNING_KEY must be an Ed25519 key for EdDSA"
                    if algorithm == "EdDSA"
                    else "TOKENREQ_SIGNING_KEY must be a P-256 EC key for ES256"
                )
            current = _asymmetric_key(public_key, algorithm)
        derived_kid = current.kid
        if key_id:
            jwk = None if current.jwk is None else {**current.jwk, "kid": key_id}
            current = _VerifyingKey(key_id, algorithm, current.key, jwk)
        self.key_id = current.kid
        #: The signing algorithm's PyJWT object, and the header of every token
        #: minted here as its base64url segment: both fixed for the service's
        #: life (algorithm, kid and typ; nothing secret).
        self._signer = _ALGORITHM_OBJECTS[algorithm]
        self._signing_key = self._signer.prepare_key(self._signing_key)
        header = {"alg": algorithm, "kid": self.key_id, "typ": TOKEN_TYPE}
        self._header_segment = _b64url(
            json.dumps(header, separators=(",", ":"), sort_keys=True).encode("ascii")
        ).encode("ascii")
        #: Every key that verifies, by kid: the current one first.
        self._keys: dict[str, _VerifyingKey] = {current.kid: current}
        for fallback in _fallback_keys(secret_fallbacks, key_fallbacks):
            if fallback.kid == derived_kid:
                continue  # the current key listed again
            if fallback.kid in self._keys:
                if fallback.kid == self.key_id:
                    raise ConfigError(
                        "TOKENREQ_SIGNING_KEY_ID is the kid of a fallback signing key: "
                        "two keys cannot share a kid"
                    )
                continue  # the same fallback listed twice
            self._keys[fallback.kid] = fallback

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, now_ms: Clock = now_ms) -> TokenService:
        """Build from ``TOKENREQ_*`` settings; raises :class:`ConfigError` naming the setting."""
        secret = settings.read(config, "TOKENREQ_SIGNING_SECRET")
        private_key = settings.read(config, "TOKENREQ_SIGNING_KEY")
        algorithm = settings.read(config, "TOKENREQ_TOKEN_ALGORITHM")
        if algorithm is None:
            algorithm = "HS256"
            if private_key and not secret:
                key = _load_key(private_key, "TOKENREQ_SIGNING_KEY")
                algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "EdDSA"
        return cls(
            algorithm=algorithm,
            secret=secret,
            private_key=private_key,
            secret_fallbacks=settings.read(config, "TOKENREQ_SIGNING_SECRET_FALLBACKS"),
            key_fallbacks=settings.read(config, "TOKENREQ_SIGNING_KEY_FALLBACKS"),
            issuer=settings.read(config, "TOKENREQ_TOKEN_ISSUER"),
            key_id=settings.read(config, "TOKENREQ_SIGNING_KEY_ID"),
            leeway_s=settings.read(config, "TOKENREQ_LEEWAY"),
            max_token_bytes=settings.read(config, "TOKENREQ_MAX_TOKEN_BYTES"),
            max_ttl_ms=settings.read(config, "TOKENREQ_MAX_TTL"),
            now_ms=now_ms,
        )

    @property
    def asymmetric(self) -> bool:
        """Whether there is a public key to publish (the current key or a fallback)."""
        return any(key.jwk is not None for key in self._keys.values())

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The kid of every key that verifies tokens, the current one first."""
        return tuple(self._keys)

    def jwks(self) -> dict[str, Any]:
        """The JWK Set: every public verification key, the current one first."""
        return {"keys": [dict(key.jwk) for key in self._keys.values() if key.jwk is not None]}

    def __repr__(self) -> str:
        return f"TokenService(algorithm={self.algorithm!r}, kid={self.key_id!r})"

    # -- minting -------------------------------------------------------------------

    def mint(
        self,
        *,
        key_name: str,
        capability: Capability,
        client_id: str | None,
        issued_ms: int,
        expires_ms: int,
    ) -> IssuedToken:
        """Sign a token with the current key. ``exp`` is rounded up to a whole second."""
        token_id = secrets.token_urlsafe(16)
        iat = issued_ms // 1000
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "iat": iat,
            "nbf": iat,
            "exp": -(-expires_ms // 1000),
            "issued": issued_ms,
            "jti": token_id,
            "keyName": key_name,
            "capability": capability.canonical,
        }
        if client_id is not None:
            claims["clientId"] = client_id
        # What jwt.encode(claims, key, algorithm, headers={"typ", "kid"}) writes, without
        # rebuilding the fixed header and re-preparing the key for every token.
        payload = json.dumps(claims, separators=(",", ":")).encode("ascii")
        signing_input = self._header_segment + b"." + _b64url(payload).encode("ascii")
        signature = self._signer.sign(signing_input, self._signing_key)
        token = f"{signing_input.decode('ascii')}.{_b64url(signature)}"
        return IssuedToken(
            token=token,
            key_name=key_name,
            client_id=client_id,
            capability=capability,
            token_id=token_id,
            issued_ms=issued_ms,
            expires_ms=expires_ms,
        )

    # -- verification --------------------------------------------------------------

    def verify(
        self, token: str, keys: KeyStore, *, revoked: RevocationCheck | None = None
    ) -> Identity:
        """Verify a provider token or an Ably JWT; raises a :class:`TokenReqError`.

        40144 invalid token, 40142 expired, 40101 the key is no longer known,
        40141 the key is revoked or ``revoked(identity)`` is true, 40132 the
        key has expired.
        """
        if not isinstance(token, str) or len(token) > self.max_token_bytes:
            raise InvalidToken(f"token is larger than {self.max_token_bytes} bytes")
        if _COMPACT.fullmatch(token) is None:
            raise InvalidToken("token is not a signed compact JWT")
        now = self._now()
        # A bearer token comes back with every request. One of ours whose header
        # and signature verified under this service's keys (fixed for its life)
        # is remembered by digest: a hit skips the parsing and the signature,
        # never the claims, the key's status and capability, or `revoked`.
        digest = hashlib.sha256(token.encode("ascii")).digest()
        entry = self._verified.get(digest)
        if entry is not None:
            identity = self._claims_ours(entry, keys, now)
        else:
            identity = self._verify_signed(token, digest, keys, now)
        if revoked is not None and revoked(identity):
            raise TokenRevoked("Token revoked")
        return identity

    def _verify_signed(self, token: str, digest: bytes, keys: KeyStore, now: int) -> Identity:
        """Parse strictly, route by ``typ``, check the signature and the claims."""
        header_seg, payload_seg, signature_seg = token.split(".")
        header = _strict_segment(header_seg, "header")
        payload = _strict_segment(payload_seg, "payload")
        signing_input = f"{header_seg}.{payload_seg}".encode("ascii")
        if "crit" in header or "b64" in header:
            raise InvalidToken("token header uses an unsupported extension (crit/b64)")
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower() in _OUR_TYPES:
            entry = _Verified(payload)
            identity = self._verify_ours(signing_input, signature_seg, header, entry, keys, now)
            if len(token) <= _VERIFIED_MAX_CHARS and self._verified_size > 0:
                if len(self._verified) >= self._verified_size:
                    self._verified.clear()
                self._verified[digest] = entry
            return identity
        if typ is None or (isinstance(typ, str) and typ.lower() in _ABLY_TYPES):
            return self._verify_ably(signing_input, signature_seg, header, payload, keys, now)
        raise InvalidToken("token type (typ) is not accepted")

    def _times(self, payload: Mapping[str, Any], now: int) -> tuple[int, int]:
        exp = _required_seconds(payload, "exp")
        iat = _required_seconds(payload, "iat")
        nbf = _seconds(payload, "nbf")
        if exp <= iat:
            raise InvalidToken("token exp is not after iat")
        if iat > now + self.leeway_ms:
            raise InvalidToken("token was issued in the future (iat); check the clocks")
        if nbf is not None and nbf > now + self.leeway_ms:
            raise InvalidToken("token is not valid yet (nbf)")
        if now >= exp + self.leeway_ms:
            raise TokenExpired("Token expired")
        return iat, exp

    def _verify_ours(
        self,
        signing_input: bytes,
        signature_seg: str,
        header: Mapping[str, Any],
        entry: _Verified,
        keys: KeyStore,
        now: int,
    ) -> Identity:
        kid = header.get("kid")
        signer = self._keys.get(kid) if isinstance(kid, str) else None
        if signer is None:
            raise InvalidToken(
                "token was signed with a key this provider does not know (kid): "
                "it may have been removed from the signing key fallbacks"
            )
        if header.get("alg") != signer.algorithm:
            raise InvalidToken("token algorithm (alg) is not accepted")
        _check_signature(signing_input, signature_seg, signer.algorithm, (signer.key,))
        return self._claims_ours(entry, keys, now)

    def _claims_ours(self, entry: _Verified, keys: KeyStore, now: int) -> Identity:
        """The checks of one of our tokens after its signature verified (or a cache hit)."""
        payload = entry.payload
        if payload.get("iss") != self.issuer:
            raise InvalidToken("token issuer (iss) is not accepted")
        jti = _required_string(payload, "jti")
        if len(jti) > _MAX_ID_CHARS:
            raise InvalidToken("token jti claim is too long")
        key_name = _required_string(payload, "keyName")
        cap_text = _required_string(payload, "capability")
        client_id = _string(payload, "clientId")
        iat, exp = self._times(payload, now)
        issued = _issued_ms(payload, iat)
        revocation_key = _string(payload, REVOCATION_KEY_CLAIM)
        key = _key_view(keys, key_name)
        if key is None:
            raise InvalidCredentials(f"the key {key_name!r} that issued this token is not known")
        _check_key(key, now, client_id, revocation_key, issued)
        # The capability narrowed to the key's as it is now: recomputed whenever
        # the key's capability differs from the one the entry remembers.
        key_text = key.capability.canonical
        narrowed = entry.narrowed
        if narrowed is None or narrowed[0] != key_text:
            narrowed = (key_text, _capability_claim(cap_text, key, "capability"))
            entry.narrowed = narrowed
        return Identity(
            key_name=key_name,
            client_id=client_id,
            capability=narrowed[1],
            token_id=jti,
            issued_ms=issued,
            expires_ms=exp,
            kind="token",
            revocation_key=revocation_key,
        )

    def _verify_ably(
        self,
        signing_input: bytes,
        signature_seg: str,
        header: Mapping[str, Any],
        payload: Mapping[str, Any],
        keys: KeyStore,
        now: int,
    ) -> Identity:
        if header.get("alg") != "HS256":
            raise InvalidToken("Ably JWT algorithm (alg) must be HS256")
        key_name = header.get("kid")
        if not isinstance(key_name, str) or not key_name:
            raise InvalidToken("Ably JWT header has no kid (the key name)")
        key = keys.get(key_name)
        if key is None:
            raise InvalidCredentials(f"Ably JWT key {key_name!r} is not known")
        # The key's current secret and those still in their rotation grace, newest first.
        secrets_now = [secret.encode("utf-8") for secret in key.verifying_secrets(now)]
        _check_signature(signing_input, signature_seg, "HS256", secrets_now)
        cap_text = _required_string(payload, "x-ably-capability")
        client_id = _string(payload, "x-ably-clientId")
        jti = payload.get("jti")
        iat, exp = self._times(payload, now)
        if exp - iat > self.max_ttl_ms:
            raise InvalidToken("Ably JWT lifetime (exp - iat) is longer than TOKENREQ_MAX_TTL")
        revocation_key = _string(payload, REVOCATION_KEY_CLAIM)
        # Status and revocations from the key's non-secret view when the store
        # has one (the secrets above came from get()).
        view = _key_view(keys, key_name) if hasattr(keys, "status") else key
        if view is None:
            raise InvalidCredentials(f"Ably JWT key {key_name!r} is not known")
        # Only whole seconds are known (iat): the start of the iat second is the
        # earliest the token can have been issued, so a revocation whose
        # issuedBefore falls later in that second refuses it (conservative).
        _check_key(view, now, client_id, revocation_key, iat)
        return Identity(
            key_name=key_name,
            client_id=client_id,
            capability=_capability_claim(cap_text, view, "x-ably-capability"),
            token_id=jti if isinstance(jti, str) and len(jti) <= _MAX_ID_CHARS else None,
            issued_ms=iat,
            expires_ms=exp,
            kind="ably-jwt",
            claims=MappingProxyType({k: v for k, v in payload.items() if not reserved_claim(k)}),
            revocation_key=revocation_key,
        )
