"""Minting and verifying the provider's access tokens (JWTs, with PyJWT).

A token is a JWT with header ``{"alg", "typ": "at+jwt", "kid"}`` and claims
``iss``, ``iat``, ``nbf``, ``exp`` (seconds), ``jti`` (128 random bits),
``keyName``, ``capability`` (canonical text) and ``clientId`` when set.
HS256 with a shared secret by default; EdDSA or ES256 with a PEM private key,
whose public half :meth:`TokenService.jwks` publishes.

Verification follows RFC 8725: the algorithm is pinned (never read from the
token), the size is checked before decoding, header and payload are parsed
with duplicate keys refused, ``typ`` is checked, ``exp``/``iat``/``jti``/``iss``
are required and must be numbers/strings as the RFC says (a numeric string
``exp`` is refused), and time is checked against the injected clock with a
leeway. Ably JWTs (``typ`` ``JWT``, ``kid`` = key name, HS256 with that key's
secret) are accepted too. A token never grants more than its key grants now.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from .capability import Capability, InvalidCapability
from .clock import Clock, now_ms
from .config import get_int, get_str
from .errors import ConfigError, InvalidCredentials, InvalidToken, TokenExpired
from .keys import ApiKey, KeyStore
from .tokenrequest import _hmac_key_pads, _hmac_sha256, _make_pads, random_bytes

#: Algorithms the provider can sign its tokens with.
ALGORITHMS = ("HS256", "EdDSA", "ES256")
#: The ``typ`` header of the provider's tokens (RFC 9068).
TOKEN_TYPE = "at+jwt"
#: The default ``iss`` claim (``TOKENREQ_TOKEN_ISSUER``).
DEFAULT_ISSUER = "flask-tokenreq"
#: Shortest ``TOKENREQ_SIGNING_SECRET`` accepted, in bytes (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32
DEFAULT_LEEWAY_S = 5
DEFAULT_MAX_TOKEN_BYTES = 8192
DEFAULT_MAX_TTL_MS = 86_400_000

TokenKind = Literal["token", "ably-jwt", "basic"]

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_OUR_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_ABLY_TYPES = frozenset({"jwt", "application/jwt"})
_MAX_ID_CHARS = 256
_ALL_CANONICAL = Capability.all().canonical
_ALGORITHM_OBJECTS = jwt.algorithms.get_default_algorithms()
_HS256 = _ALGORITHM_OBJECTS["HS256"]
#: Bounds of TokenService's verified-token cache (entries; characters per token).
_VERIFIED_CACHE_SIZE = 4096
_VERIFIED_MAX_CHARS = 2048


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified request is: stored in ``flask.g.tokenreq`` by ``require()``."""

    key_name: str
    client_id: str | None
    capability: Capability
    token_id: str | None = None
    issued_ms: int | None = None
    expires_ms: int | None = None
    kind: TokenKind = "token"


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
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidToken(f"token {name} claim must be a finite number")
    return int(value * 1000)


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


@functools.lru_cache(maxsize=1024)
def _effective_capability(token_text: str, key_text: str) -> Capability:
    """The token's capability narrowed to what its key grants (cached: tokens repeat)."""
    token_cap = Capability.parse(token_text)
    if key_text == _ALL_CANONICAL:
        return token_cap
    return token_cap.intersect(Capability.parse(key_text))


def _capability_claim(text: str, key: ApiKey, what: str) -> Capability:
    try:
        return _effective_capability(text, key.capability.canonical)
    except InvalidCapability:
        raise InvalidToken(f"token {what} claim is not a valid capability") from None


# -- keys ------------------------------------------------------------------------------


def _load_private_key(value: str | bytes, setting: str) -> Any:
    """Load a PEM private key given as text, bytes or a file path."""
    data: bytes
    if isinstance(value, str):
        text = value.strip()
        if "-----BEGIN" not in text and os.path.isfile(text):
            with open(text, "rb") as handle:
                data = handle.read()
        else:
            if "\n" not in text and "\\n" in text:
                text = text.replace("\\n", "\n")  # an env var with escaped newlines
            data = text.encode("utf-8")
    elif isinstance(value, bytes):
        data = value
    else:
        raise ConfigError(f"{setting} must be a PEM private key (text) or a path to one")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{setting} is not an unencrypted PEM private key (or a path to one)"
        ) from None
    except Exception:  # cryptography's UnsupportedAlgorithm and friends
        raise ConfigError(f"{setting} holds an unsupported private key") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x")
    text = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(text.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class _Signed:
    signing_input: bytes
    signature: str


# -- the service -----------------------------------------------------------------------


class TokenService:
    """Mints and verifies the provider's tokens. Build once; thread-safe."""

    def __init__(
        self,
        *,
        algorithm: str = "HS256",
        secret: str | bytes | None = None,
        private_key: str | bytes | None = None,
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
        self._alg = _ALGORITHM_OBJECTS[algorithm]
        self._hs256 = _ALGORITHM_OBJECTS["HS256"]
        self._public_jwk: dict[str, Any] | None = None
        self._hs_pads: Any = None
        #: Our tokens whose header and signature verified: token -> payload (read
        #: only). A bearer token is sent with every request; a hit skips the
        #: parsing and the signature check (the same string verified before,
        #: under this service's key), never the claim checks.
        self._verified: dict[str, Mapping[str, Any]] = {}
        self._signing_key: Any
        self._verifying_key: Any
        if algorithm == "HS256":
            if secret is None or secret == "":
                raise ConfigError(
                    "TOKENREQ_SIGNING_SECRET is not set: HS256 tokens need a secret of at "
                    f"least {MIN_SECRET_BYTES} bytes (e.g. secrets.token_urlsafe(32))"
                )
            if not isinstance(secret, (str, bytes)):
                raise ConfigError("TOKENREQ_SIGNING_SECRET must be a string")
            raw = secret.encode("utf-8") if isinstance(secret, str) else secret
            if len(raw) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"TOKENREQ_SIGNING_SECRET is too short: at least {MIN_SECRET_BYTES} bytes "
                    "are required for HS256"
                )
            try:
                self._signing_key = self._verifying_key = self._alg.prepare_key(raw)
                # HS256 is computed from precomputed HMAC key blocks (same result as PyJWT's).
                self._hs_pads = _make_pads(self._signing_key)
            except jwt.InvalidKeyError:
                raise ConfigError(
                    "TOKENREQ_SIGNING_SECRET looks like a PEM or SSH key: use a random secret "
                    "for HS256, or TOKENREQ_SIGNING_KEY for EdDSA/ES256"
                ) from None
            derived = hmac.new(raw, b"flask-tokenreq key id", hashlib.sha256).digest()
            default_kid = "hs-" + _b64url(derived[:12])
        else:
            if private_key is None or private_key == "":
                raise ConfigError(
                    f"TOKENREQ_SIGNING_KEY is not set: {algorithm} tokens need a PEM private key"
                )
            key = _load_private_key(private_key, "TOKENREQ_SIGNING_KEY")
            if algorithm == "EdDSA":
                if not isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
                    raise ConfigError("TOKENREQ_SIGNING_KEY must be an Ed25519 key for EdDSA")
                jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
            else:
                if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                    key.curve, ec.SECP256R1
                ):
                    raise ConfigError("TOKENREQ_SIGNING_KEY must be a P-256 EC key for ES256")
                jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            self._signing_key = key
            self._verifying_key = key.public_key()
            default_kid = _thumbprint(jwk)
            self._public_jwk = dict(jwk)
        self.key_id = key_id or default_kid
        if self._public_jwk is not None:
            self._public_jwk.update({"kid": self.key_id, "alg": algorithm, "use": "sig"})
        header = {"alg": algorithm, "typ": TOKEN_TYPE, "kid": self.key_id}
        self._header: dict[str, Any] = header
        self._header_segment = _b64url(json.dumps(header, separators=(",", ":")).encode())

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, now_ms: Clock = now_ms) -> TokenService:
        """Build from ``TOKENREQ_*`` settings; raises :class:`ConfigError` naming the setting."""
        secret = get_str(config, "TOKENREQ_SIGNING_SECRET")
        private_key = get_str(config, "TOKENREQ_SIGNING_KEY")
        algorithm = get_str(config, "TOKENREQ_TOKEN_ALGORITHM")
        if algorithm is None:
            algorithm = "HS256"
            if private_key and not secret:
                key = _load_private_key(private_key, "TOKENREQ_SIGNING_KEY")
                algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "EdDSA"
        leeway = get_int(config, "TOKENREQ_LEEWAY", DEFAULT_LEEWAY_S, minimum=0)
        max_bytes = get_int(
            config, "TOKENREQ_MAX_TOKEN_BYTES", DEFAULT_MAX_TOKEN_BYTES, minimum=256
        )
        max_ttl = get_int(config, "TOKENREQ_MAX_TTL", DEFAULT_MAX_TTL_MS, minimum=1)
        issuer = get_str(config, "TOKENREQ_TOKEN_ISSUER", DEFAULT_ISSUER) or DEFAULT_ISSUER
        return cls(
            algorithm=algorithm,
            secret=secret,
            private_key=private_key,
            issuer=issuer,
            key_id=get_str(config, "TOKENREQ_SIGNING_KEY_ID"),
            leeway_s=leeway,
            max_token_bytes=max_bytes,
            max_ttl_ms=max_ttl,
            now_ms=now_ms,
        )

    @property
    def asymmetric(self) -> bool:
        return self._public_jwk is not None

    def jwks(self) -> dict[str, Any]:
        """The JWK Set with the public verification key (no keys for HS256)."""
        return {"keys": [] if self._public_jwk is None else [dict(self._public_jwk)]}

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
        """Sign a token. ``exp`` is rounded up to a whole second."""
        # The form of secrets.token_urlsafe(16): 128 bits, 22 characters.
        token_id = base64.urlsafe_b64encode(random_bytes(16)).rstrip(b"=").decode("ascii")
        iat = issued_ms // 1000
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "iat": iat,
            "nbf": iat,
            "exp": -(-expires_ms // 1000),
            "jti": token_id,
            "keyName": key_name,
            "capability": capability.canonical,
        }
        if client_id is not None:
            claims["clientId"] = client_id
        body = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        signing_input = f"{self._header_segment}.{_b64url(body)}"
        if self.algorithm == "HS256":
            signature = _hmac_sha256(self._hs_pads, signing_input.encode("ascii"))
        else:
            signature = self._alg.sign(signing_input.encode("ascii"), self._signing_key)
        token = f"{signing_input}.{_b64url(signature)}"
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

    def verify(self, token: str, keys: KeyStore) -> Identity:
        """Verify a provider token or an Ably JWT; raises a :class:`TokenReqError`.

        40144 invalid token, 40142 expired, 40101 the key is no longer known,
        40131/40132 the key is revoked/expired.
        """
        if not isinstance(token, str) or len(token) > self.max_token_bytes:
            raise InvalidToken(f"token is larger than {self.max_token_bytes} bytes")
        verified = self._verified.get(token)
        if verified is not None:
            # This exact string passed the header and signature checks before:
            # only the claims are checked again (time, key status, capability).
            return self._claims_ours(verified, keys)
        if _COMPACT.fullmatch(token) is None:
            raise InvalidToken("token is not a signed compact JWT")
        header_seg, payload_seg, signature_seg = token.split(".")
        # The provider's own header is always the same text: skip parsing it.
        header = (
            self._header
            if header_seg == self._header_segment
            else _strict_segment(header_seg, "header")
        )
        payload = _strict_segment(payload_seg, "payload")
        signed = _Signed(f"{header_seg}.{payload_seg}".encode("ascii"), signature_seg)
        if "crit" in header or "b64" in header:
            raise InvalidToken("token header uses an unsupported extension (crit/b64)")
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower() in _OUR_TYPES:
            identity = self._verify_ours(signed, header, payload, keys)
            if header_seg == self._header_segment and len(token) <= _VERIFIED_MAX_CHARS:
                if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                    self._verified.clear()
                self._verified[token] = payload
            return identity
        if typ is None or (isinstance(typ, str) and typ.lower() in _ABLY_TYPES):
            return self._verify_ably(signed, header, payload, keys)
        raise InvalidToken("token type (typ) is not accepted")

    @staticmethod
    def _check_signature(signed: _Signed, algorithm: Any, key: Any) -> None:
        """Verify with PyJWT's algorithm object for the pinned algorithm.

        HS256 (``algorithm`` is PyJWT's HS256 object, ``key`` bytes) is checked
        the way PyJWT does it (``hmac.compare_digest`` of the expected MAC),
        with the MAC computed from cached HMAC key blocks.
        """
        signature = _signature_bytes(signed.signature)
        try:
            if algorithm is _HS256 and isinstance(key, bytes):
                expected = _hmac_sha256(_hmac_key_pads(key), signed.signing_input)
                valid = hmac.compare_digest(signature, expected)
            else:
                valid = algorithm.verify(signed.signing_input, key, signature)
        except (jwt.PyJWTError, ValueError, TypeError):
            valid = False
        if not valid:
            raise InvalidToken("token signature does not verify")

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
        signed: _Signed,
        header: Mapping[str, Any],
        payload: Mapping[str, Any],
        keys: KeyStore,
    ) -> Identity:
        if header.get("alg") != self.algorithm:
            raise InvalidToken("token algorithm (alg) is not accepted")
        if header.get("kid") != self.key_id:
            raise InvalidToken("token was not signed with the current signing key (kid)")
        self._check_signature(signed, self._alg, self._verifying_key)
        return self._claims_ours(payload, keys)

    def _claims_ours(self, payload: Mapping[str, Any], keys: KeyStore) -> Identity:
        """The checks of one of our tokens after its signature verified."""
        if payload.get("iss") != self.issuer:
            raise InvalidToken("token issuer (iss) is not accepted")
        jti = _required_string(payload, "jti")
        if len(jti) > _MAX_ID_CHARS:
            raise InvalidToken("token jti claim is too long")
        key_name = _required_string(payload, "keyName")
        cap_text = _required_string(payload, "capability")
        client_id = _string(payload, "clientId")
        now = self._now()
        iat, exp = self._times(payload, now)
        key = keys.get(key_name)
        if key is None:
            raise InvalidCredentials(f"the key {key_name!r} that issued this token is not known")
        key.check_active(now)
        return Identity(
            key_name=key_name,
            client_id=client_id,
            capability=_capability_claim(cap_text, key, "capability"),
            token_id=jti,
            issued_ms=iat,
            expires_ms=exp,
            kind="token",
        )

    def _verify_ably(
        self,
        signed: _Signed,
        header: Mapping[str, Any],
        payload: Mapping[str, Any],
        keys: KeyStore,
    ) -> Identity:
        if header.get("alg") != "HS256":
            raise InvalidToken("Ably JWT algorithm (alg) must be HS256")
        key_name = header.get("kid")
        if not isinstance(key_name, str) or not key_name:
            raise InvalidToken("Ably JWT header has no kid (the key name)")
        key = keys.get(key_name)
        if key is None:
            raise InvalidCredentials(f"Ably JWT key {key_name!r} is not known")
        self._check_signature(signed, self._hs256, key.secret.encode("utf-8"))
        cap_text = _required_string(payload, "x-ably-capability")
        client_id = _string(payload, "x-ably-clientId")
        jti = payload.get("jti")
        now = self._now()
        iat, exp = self._times(payload, now)
        if exp - iat > self.max_ttl_ms:
            raise InvalidToken("Ably JWT lifetime (exp - iat) is longer than TOKENREQ_MAX_TTL")
        key.check_active(now)
        return Identity(
            key_name=key_name,
            client_id=client_id,
            capability=_capability_claim(cap_text, key, "x-ably-capability"),
            token_id=jti if isinstance(jti, str) and len(jti) <= _MAX_ID_CHARS else None,
            issued_ms=iat,
            expires_ms=exp,
            kind="ably-jwt",
        )
