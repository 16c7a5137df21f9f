"""The tkr_ secret format: shape, checksum, display, the managed-key form."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_tokenreq.keys.secret import (
    BASE62,
    CHECKSUM_LENGTH,
    PREFIX,
    RANDOM_LENGTH,
    SECRET_LENGTH,
    check_secret_format,
    display,
    format_secret,
    hint,
    looks_like_managed_key,
    new_key_id,
    new_secret,
    valid_app_id,
)

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SHAPE = re.compile(r"tkr_[A-Za-z0-9_-]{43}[0-9A-Za-z]{6}")


def _base62_value(text: str) -> int:
    n = 0
    for ch in text:
        n = n * 62 + BASE62.index(ch)
    return n


def test_new_secret_shape_and_checksum() -> None:
    secret = new_secret()
    assert len(secret) == SECRET_LENGTH == 53
    assert SHAPE.fullmatch(secret)
    body, checksum = secret[:-CHECKSUM_LENGTH], secret[-CHECKSUM_LENGTH:]
    # The checksum is the base62 CRC32 of everything before it, prefix included.
    assert _base62_value(checksum) == zlib.crc32(body.encode())
    # 256 random bits: the random part decodes to 32 bytes.
    assert len(base64.urlsafe_b64decode(body[len(PREFIX) :] + "=")) == 32
    assert check_secret_format(secret)


def test_new_secrets_differ() -> None:
    assert len({new_secret() for _ in range(1000)}) == 1000


def test_format_secret_needs_32_bytes() -> None:
    with pytest.raises(ValueError, match="32"):
        format_secret(b"x" * 31)


@given(st.binary(min_size=32, max_size=32))
def test_every_formatted_secret_checks(raw: bytes) -> None:
    secret = format_secret(raw)
    assert SHAPE.fullmatch(secret)
    assert check_secret_format(secret)


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(min_value=0, max_value=SECRET_LENGTH - 1),
    st.characters(codec="utf-8"),
)
def test_checksum_catches_every_single_character_change(
    raw: bytes, position: int, replacement: str
) -> None:
    secret = format_secret(raw)
    if secret[position] == replacement:
        replacement = "A" if secret[position] != "A" else "B"
    changed = secret[:position] + replacement + secret[position + 1 :]
    assert not check_secret_format(changed)


def test_checksum_catches_every_substitution_exhaustively() -> None:
    """Every position, every character of the alphabets: no single change passes."""
    secret = new_secret()
    for position in range(SECRET_LENGTH):
        for ch in ALPHABET:
            if ch != secret[position]:
                changed = secret[:position] + ch + secret[position + 1 :]
                assert not check_secret_format(changed), (position, ch)


@given(st.binary(min_size=32, max_size=32), st.integers(0, SECRET_LENGTH - 2))
def test_adjacent_swaps_and_deletions_are_refused(raw: bytes, i: int) -> None:
    secret = format_secret(raw)
    swapped = secret[:i] + secret[i + 1] + secret[i] + secret[i + 2 :]
    if swapped != secret:
        assert not check_secret_format(swapped)
    assert not check_secret_format(secret[:i] + secret[i + 1 :])
    assert not check_secret_format(secret + "A")


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"tkr_",
        42,
        "",
        "tkr_",
        "TKR_" + "A" * 49,
        "tkr-" + "A" * 49,
        "tkr_" + "A" * 48,  # one short
        "tkr_" + "A" * 43 + "!!!!!!",  # checksum outside base62
        "tkr_" + "A" * 42 + "é" + "000000",  # non-ASCII in the random part
        "tkr_" + "A" * 42 + " " + "000000",
        "s3cr3t-0123456789abcdef0123456789abcdef0123456789abcd",  # 53 chars, not tkr_
    ],
)
def test_malformed_values_are_refused(value: object) -> None:
    assert not check_secret_format(value)


def test_hint_and_display_show_two_and_four_characters_of_the_random_part() -> None:
    secret = new_secret()
    random_part = secret[len(PREFIX) : len(PREFIX) + RANDOM_LENGTH]
    assert hint(secret) == f"tkr_{random_part[:2]}…{random_part[-4:]}"
    assert display("app.key1", secret) == f"app.key1:tkr_{random_part[:2]}…{random_part[-4:]}"
    # The checksum never shows: it would give away more of the secret's bits.
    assert secret[-CHECKSUM_LENGTH:] not in display("app.key1", secret)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"app.key1:{new_secret()}", True),
        ("app.key1:tkr_mistyped", True),  # the form only; the format check refuses it later
        ("app.key1:s3cr3t-0123456789abcdef0123456789abcdef", False),  # a static key
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", False),  # a JWT
        (base64.b64encode(b"eyJhbGciOi.x.y").decode(), False),  # base64 of a token
        ("appkey1:tkr_abc", False),  # no '.' in the key name
        (".key1:tkr_abc", False),
        ("app.:tkr_abc", False),
        ("app.key1 :tkr_abc", False),
        ("app.key1:tkr_abc\n", False),
        ("app.key1:" + "tkr_" + "a" * 600, False),  # absurdly long
        (None, False),
        (b"app.key1:tkr_x", False),
    ],
)
def test_looks_like_managed_key(value: object, expected: bool) -> None:
    assert looks_like_managed_key(value) is expected


def test_key_ids_are_short_url_safe_and_random() -> None:
    ids = {new_key_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9A-Za-z]{8}", i) for i in ids)


@pytest.mark.parametrize(
    ("app_id", "ok"),
    [
        ("tokenreq", True),
        ("xVLyHw", True),
        ("my-app_1", True),
        ("", False),
        ("a.b", False),
        ("a:b", False),
        ("a b", False),
        ("x" * 65, False),
        (None, False),
    ],
)
def test_valid_app_id(app_id: object, ok: bool) -> None:
    assert valid_app_id(app_id) is ok


def test_importing_the_secret_format_loads_no_sqlalchemy() -> None:
    code = (
        "import sys, flask_tokenreq.keys.secret, flask_tokenreq.keys; "
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
