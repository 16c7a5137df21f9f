"""The TokenRequest wire format: Ably vectors, MAC properties, validation."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import replace
from enum import Enum
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_tokenreq import (
    InvalidCapability,
    TokenProvider,
    TokenRequest,
    sign_token_request,
    verify_mac,
)
from flask_tokenreq.clock import now_ms
from flask_tokenreq.errors import (
    InvalidBody,
    InvalidClientId,
    InvalidCredentials,
    InvalidParameter,
    TokenReqError,
)
from flask_tokenreq.tokenrequest import (
    FIELDS,
    InvalidTokenRequest,
    check_mac,
    compute_mac,
    split_key,
)

from .conftest import KEY, KEY_NAME, SECRET

# The Ably vectors, committed under tests/data (see tests/data/README.md).
VECTORS_PATH = Path(__file__).resolve().parent / "data" / "ably-token-requests.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())["vectors"]


def _id(vector: dict[str, Any]) -> str:
    return str(vector["name"])


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["kind"] == "sign_and_verify"], ids=_id)
def test_vector_signs_byte_for_byte(vector: dict[str, Any]) -> None:
    params = vector["params"]
    signed = sign_token_request(
        vector["key"],
        ttl=params.get("ttl"),
        capability=params.get("capability"),
        client_id=params.get("clientId"),
        timestamp=params["timestamp"],
        nonce=params["nonce"],
    )
    assert signed.to_dict() == vector["tokenRequest"]
    if "signText" in vector:
        assert signed.sign_text == vector["signText"]
    # JSON text, field by field, exactly as ably-js writes it.
    assert json.loads(signed.to_json()) == vector["tokenRequest"]


@pytest.mark.parametrize("vector", VECTORS, ids=_id)
def test_vector_verifies(vector: dict[str, Any]) -> None:
    _, secret = split_key(vector["key"])
    received = vector["tokenRequest"]
    assert verify_mac(received, secret)
    assert verify_mac(TokenRequest.from_dict(received), secret)
    assert verify_mac(received, vector["key"])  # the full key string is accepted too
    assert not verify_mac(received, secret + "x")


def test_spaced_capability_is_verified_as_received() -> None:
    vector = next(v for v in VECTORS if v["name"] == "V1_star_alice__ably_python")
    request = TokenRequest.from_dict(vector["tokenRequest"])
    assert request.capability == '{"*": ["*"]}'
    assert verify_mac(request, "secretvalue")
    # Re-serialising the capability would break the MAC: we must not do it.
    assert not verify_mac(replace(request, capability='{"*":["*"]}'), "secretvalue")


def test_null_counts_as_absent_and_to_dict_omits_absent() -> None:
    signed = sign_token_request(KEY, timestamp=1_700_000_000_000)
    wire = {**signed.to_dict(), "ttl": None, "capability": None, "clientId": None}
    parsed = TokenRequest.from_dict(wire)
    assert parsed == signed
    assert set(parsed.to_dict()) == {"keyName", "timestamp", "nonce", "mac"}
    assert "null" not in parsed.to_json()


def test_generated_nonce_has_at_least_128_bits() -> None:
    nonces = {sign_token_request(KEY).nonce for _ in range(200)}
    assert len(nonces) == 200
    for nonce in nonces:
        assert len(nonce) >= 16
        assert len(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))) * 8 >= 128


def test_timestamp_from_injected_clock() -> None:
    assert sign_token_request(KEY, now=lambda: 42_000).timestamp == 42_000


def test_secret_not_in_output() -> None:
    signed = sign_token_request(KEY, ttl=1000, capability={"a": ["publish"]}, client_id="c")
    assert SECRET not in signed.to_json()
    assert SECRET not in repr(signed)


@pytest.mark.parametrize(
    "key", ["no-colon-s3cr3t0123456789abcdef", "appid.keyid:", ":s3cr3t0123456789abcdef", ""]
)
def test_bad_key_is_refused_without_echo(key: str) -> None:
    with pytest.raises(ValueError, match=r"appId\.keyId:secret") as info:
        sign_token_request(key)
    assert "s3cr3t" not in str(info.value)


def test_empty_client_id_is_40012() -> None:
    with pytest.raises(InvalidClientId) as info:
        sign_token_request(KEY, client_id="")
    assert info.value.code == 40012


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("timestamp", True, InvalidBody),
        ("timestamp", "1700000000000", InvalidBody),
        ("timestamp", 1.5, InvalidBody),
        ("ttl", True, InvalidBody),
        ("ttl", "1000", InvalidBody),
        ("ttl", 0, InvalidParameter),
        ("ttl", -5, InvalidParameter),
        ("nonce", 1234567890123456, InvalidBody),
        ("keyName", ["appid.keyid"], InvalidBody),
        ("capability", {"*": ["*"]}, InvalidBody),
        ("clientId", "", InvalidClientId),
        ("clientId", 7, InvalidBody),
        ("mac", None, InvalidBody),
        ("extra", "x", InvalidBody),
    ],
)
def test_from_dict_rejects(field: str, value: object, error: type[Exception]) -> None:
    wire = sign_token_request(KEY, ttl=1000, client_id="c").to_dict()
    wire[field] = value
    with pytest.raises(error):
        TokenRequest.from_dict(wire)
    assert not verify_mac(wire, SECRET)


def test_from_dict_error_names_the_field() -> None:
    wire = sign_token_request(KEY).to_dict()
    wire["timestamp"] = "soon"
    with pytest.raises(InvalidTokenRequest, match="timestamp must be an integer"):
        TokenRequest.from_dict(wire)
    with pytest.raises(InvalidTokenRequest, match="must be a JSON object"):
        TokenRequest.from_dict([])  # type: ignore[arg-type]


def test_check_mac_raises_40101() -> None:
    signed = sign_token_request(KEY)
    check_mac(signed, SECRET)
    with pytest.raises(InvalidCredentials) as info:
        check_mac(signed, "wrong-secret-0123456789abcdef0123456789")
    assert info.value.code == 40101
    assert info.value.status == 401


def test_non_ascii_mac_is_false_not_an_error() -> None:
    wire = sign_token_request(KEY).to_dict()
    wire["mac"] = "é" * 44
    assert verify_mac(wire, SECRET) is False


# -- properties ---------------------------------------------------------------

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
    min_size=1,
    max_size=24,
)
capabilities = st.dictionaries(
    text,
    st.lists(
        st.sampled_from(["publish", "subscribe", "history", "*", "presence"]),
        min_size=1,
        max_size=4,
    ),
    max_size=4,
)
requests_ = st.builds(
    lambda ttl, cap, client, ts, nonce: sign_token_request(
        KEY, ttl=ttl, capability=cap, client_id=client, timestamp=ts, nonce=nonce
    ),
    st.one_of(st.none(), st.integers(1, 10**10)),
    st.one_of(st.none(), capabilities),
    st.one_of(st.none(), text),
    st.integers(0, 2**53),
    text.filter(lambda s: len(s) >= 16) | st.text("abcdef0123456789", min_size=16, max_size=40),
)


def _mutations(request: TokenRequest) -> list[TokenRequest]:
    out = [
        replace(request, key_name=request.key_name + "x"),
        replace(request, timestamp=request.timestamp + 1),
        replace(request, nonce=request.nonce + "x"),
        replace(request, ttl=(request.ttl or 0) + 1),
        replace(request, client_id=(request.client_id or "") + "x"),
        replace(request, capability=(request.capability or "") + " "),
    ]
    if request.ttl is not None:
        out.append(replace(request, ttl=None))
    if request.client_id is not None:
        out.append(replace(request, client_id=None))
    if request.capability:
        out.append(replace(request, capability=None))
    return out


@settings(max_examples=150, deadline=None)
@given(requests_)
def test_any_single_field_change_fails_verification(request: TokenRequest) -> None:
    assert verify_mac(request, SECRET)
    for changed in _mutations(request):
        assert not verify_mac(changed, SECRET), changed


@settings(max_examples=150, deadline=None)
@given(requests_, st.integers(0, 255))
def test_flipped_mac_bit_fails(request: TokenRequest, bit: int) -> None:
    raw = bytearray(base64.b64decode(request.mac))
    raw[bit // 8] ^= 1 << (bit % 8)
    assert not verify_mac(replace(request, mac=base64.b64encode(bytes(raw)).decode()), SECRET)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["keyName", "clientId", "nonce"]),
    text,
    st.sampled_from(["\n", "\r"]),
    st.integers(0, 8),
)
def test_line_break_in_split_fields_is_rejected(field: str, base: str, brk: str, at: int) -> None:
    value = (base + "0123456789abcdef")[:at] + brk + base + "0123456789abcdef"
    if field == "keyName":
        value = value.replace(":", "_")  # a ':' would end the key name when signing
    wire = sign_token_request(KEY).to_dict()
    wire[field] = value
    with pytest.raises(InvalidBody):
        TokenRequest.from_dict(wire)
    assert not verify_mac(wire, SECRET)
    if field == "clientId":
        with pytest.raises(InvalidBody):
            sign_token_request(KEY, client_id=value)
    if field == "nonce":
        with pytest.raises(InvalidBody):
            sign_token_request(KEY, nonce=value)
    if field == "keyName":
        with pytest.raises(InvalidBody):
            sign_token_request(f"{value}:{SECRET}")


@given(st.sampled_from(["ttl", "timestamp"]), st.booleans())
def test_booleans_are_not_integers(field: str, value: bool) -> None:
    wire = sign_token_request(KEY, ttl=1000).to_dict()
    wire[field] = value
    with pytest.raises(InvalidBody):
        TokenRequest.from_dict(wire)
    assert not verify_mac(wire, SECRET)
    with pytest.raises(InvalidBody):
        sign_token_request(KEY, **{field: value})  # type: ignore[arg-type]


def test_field_names_are_ably_names() -> None:
    assert FIELDS == ("keyName", "ttl", "capability", "clientId", "timestamp", "nonce", "mac")
    assert sign_token_request(KEY).key_name == KEY_NAME


# -- hostile input ------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**30, -(10**30), 2**63, 2**63 - 1, -1, 0])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


def _only_4xx(call: Any) -> Any:
    """Run ``call``: its result, or None when it raised one of the package's 4xx errors."""
    try:
        return call()
    except TokenReqError as exc:
        status = exc.status
    assert 400 <= status < 500
    return None


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_as_a_body_is_a_4xx_at_worst(body: Any) -> None:
    _only_4xx(lambda: TokenRequest.from_dict(body))
    assert verify_mac(body, SECRET) is False


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([*FIELDS, "extra"]), json_values)
def test_any_json_value_in_any_field_is_a_4xx_at_worst(field: str, value: Any) -> None:
    original = sign_token_request(
        KEY, ttl=1000, capability={"a": ["publish"]}, client_id="c"
    ).to_dict()
    wire = {**original, field: value}
    request = _only_4xx(lambda: TokenRequest.from_dict(wire))
    if verify_mac(wire, SECRET) is not False:
        assert request is not None
        assert request.to_dict() == original
    if request is not None:
        _only_4xx(request.capability_object)
        assert json.loads(request.to_json()) == request.to_dict()


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("timestamp", 10**5000, InvalidBody),  # str() of it would raise ValueError
        ("timestamp", 2**63, InvalidBody),
        ("timestamp", -1, InvalidBody),
        ("ttl", 10**5000, InvalidParameter),
        ("ttl", 2**63, InvalidParameter),
    ],
    ids=["timestamp-10**5000", "timestamp-2**63", "timestamp--1", "ttl-10**5000", "ttl-2**63"],
)
def test_integers_beyond_64_bits_are_refused(
    field: str, value: int, error: type[Exception]
) -> None:
    wire = sign_token_request(KEY, ttl=1000).to_dict()
    wire[field] = value
    with pytest.raises(error):
        TokenRequest.from_dict(wire)
    assert not verify_mac(wire, SECRET)
    with pytest.raises(error):
        sign_token_request(KEY, **{field: value})  # type: ignore[arg-type]
    wire[field] = 2**63 - 1
    assert TokenRequest.from_dict(wire).to_dict()[field] == 2**63 - 1


class _Role(str, Enum):
    ADMIN = "admin"


def test_str_and_int_subclasses_are_refused() -> None:
    # The MAC covers the text; a subclass may format otherwise than the wire value.
    with pytest.raises(InvalidBody):
        sign_token_request(KEY, client_id=_Role.ADMIN)
    with pytest.raises(InvalidBody):
        sign_token_request(KEY, ttl=HTTPStatus.OK)


@pytest.mark.parametrize(
    ("field", "bad", "says"),
    [
        *[(f, "\ud800", "not valid Unicode") for f in ("keyName", "nonce", "clientId")],
        ("capability", "\ud800", "not valid Unicode"),
        # PostgreSQL cannot store NUL: a token for such a clientId could not be revoked.
        *[(f, "a\x00", "must not contain NUL") for f in ("keyName", "nonce", "clientId")],
    ],
)
def test_text_no_signed_field_may_hold_is_a_4xx_when_verifying_and_signing(
    field: str, bad: str, says: str
) -> None:
    wire = sign_token_request(KEY, client_id="c").to_dict()
    wire[field] = bad + "0123456789abcdef"
    with pytest.raises(InvalidBody, match=says):
        TokenRequest.from_dict(wire)
    assert verify_mac(wire, SECRET) is False
    if field == "clientId":
        with pytest.raises(InvalidBody, match=says):
            sign_token_request(KEY, client_id=wire[field])


def _signed_with_capability_text(capability: str) -> dict[str, Any]:
    """A wire TokenRequest with ``capability`` as given and a valid MAC."""
    unsigned = TokenRequest(
        key_name=KEY_NAME,
        capability=capability,
        timestamp=now_ms(),
        nonce=secrets.token_urlsafe(18),
        mac="unsigned",
    )
    return replace(unsigned, mac=compute_mac(unsigned.sign_text, SECRET)).to_dict()


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deep_capability_with_a_valid_mac_is_invalid_capability(depth: int) -> None:
    wire = _signed_with_capability_text('{"a":' * depth + '["publish"]' + "}" * depth)
    assert verify_mac(wire, SECRET)
    with pytest.raises(InvalidCapability) as info:
        TokenRequest.from_dict(wire).capability_object()
    assert info.value.status == 400


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_provider_answers_400_to_a_deep_capability(tmp_path: Path, depth: int) -> None:
    """Issue 8 §5: this was 500/50000 (RecursionError) at the exchange endpoint."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(
        TESTING=True,
        TOKENREQ_SIGNING_SECRET="deep-capability-signing-secret-0123456789abcdef",
        TOKENREQ_PROVIDER_KEYS=[KEY],
        TOKENREQ_NONCE_STORE="memory://",
    )
    TokenProvider(app)
    wire = _signed_with_capability_text("[" * depth + "]" * depth)
    response = app.test_client().post(f"/keys/{KEY_NAME}/requestToken", json=wire)
    assert response.status_code == 400
    error = response.get_json()["error"]
    if depth == 2_000:
        assert error["code"] == 40000
        assert "capability is nested too deeply" in error["message"]
    else:  # 200 KB: the provider's body limit answers first
        assert error["code"] == 40001


def test_repr_leaves_the_mac_out() -> None:
    treq = sign_token_request(KEY, ttl=60_000, capability={"chat": ["subscribe"]}, client_id="u")
    shown = repr(treq)
    assert treq.mac not in shown
    assert "mac" not in shown
    assert treq.nonce in shown
    assert "client_id='u'" in shown
