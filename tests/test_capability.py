"""Capabilities: canonical text, parsing errors, Ably wildcard rules, intersection."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_tokenreq import Capability, InvalidCapability, canonical_capability


def test_canonical_sorts_keys_and_operations_keeps_duplicates() -> None:
    cap = {"zeta": ["subscribe", "publish", "publish"], "alpha:*": ["presence", "history"]}
    assert canonical_capability(cap) == (
        '{"alpha:*":["history","presence"],"zeta":["publish","publish","subscribe"]}'
    )


def test_canonical_uses_utf16_order_and_no_escapes() -> None:
    # U+1F600 is the surrogate pair D83D DE00, which sorts before U+FF5E in UTF-16.
    cap = {"\uff5e": ["subscribe"], "\U0001f600": ["publish"], "é": ["history"]}
    assert canonical_capability(cap) == '{"é":["history"],"😀":["publish"],"～":["subscribe"]}'


def test_canonical_escapes_like_json_stringify() -> None:
    cap = {'q"uo\\te': ["publish"], "ctl\x01\n\x7f": ["a"], "\ud800x": ["b"]}
    assert canonical_capability(cap) == (
        '{"ctl\\u0001\\n\x7f":["a"],"q\\"uo\\\\te":["publish"],"\\ud800x":["b"]}'
    )


def test_canonical_puts_array_index_keys_first_like_javascript() -> None:
    cap = {
        "10": ["b"],
        "9": ["x"],
        "a": ["*"],
        "01": ["q"],
        "4294967295": ["z"],
        "4294967294": ["y"],
    }
    assert canonical_capability(cap) == (
        '{"9":["x"],"10":["b"],"4294967294":["y"],"01":["q"],"4294967295":["z"],"a":["*"]}'
    )


def test_canonical_accepts_json_text_and_capability() -> None:
    text = '{"b": ["x"], "a": ["y"]}'
    assert canonical_capability(text) == '{"a":["y"],"b":["x"]}'
    assert canonical_capability(Capability.parse(text)) == '{"a":["y"],"b":["x"]}'
    assert str(Capability.parse(text)) == '{"a":["y"],"b":["x"]}'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"a": "publish"}', "list of operations"),
        ('{"a": [1]}', "non-empty strings"),
        ('{"a": [""]}', "non-empty strings"),
        ("null", "JSON object"),
    ],
)
def test_malformed_capability(value: str, message: str) -> None:
    with pytest.raises(InvalidCapability, match=message) as info:
        Capability.parse(value)
    assert info.value.code == 40000
    assert info.value.status == 400


names = st.text(min_size=1, max_size=10)
caps = st.dictionaries(
    names,
    st.lists(st.sampled_from(["publish", "subscribe", "*", "history"]), min_size=1, max_size=5),
    max_size=5,
)


@given(caps)
def test_canonical_is_idempotent(cap: dict[str, list[str]]) -> None:
    once = canonical_capability(cap)
    assert canonical_capability(once) == once
    assert json.loads(once) == {
        k: sorted(v, key=lambda s: s.encode("utf-16-be")) for k, v in cap.items()
    }


@given(caps, st.randoms())
def test_canonical_is_order_insensitive(cap: dict[str, list[str]], rnd: object) -> None:
    items = list(cap.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    shuffled = {}
    for k, v in items:
        ops = list(v)
        rnd.shuffle(ops)  # type: ignore[attr-defined]
        shuffled[k] = ops
    assert canonical_capability(shuffled) == canonical_capability(cap)


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("*", "anything", True),
        ("*", "chat:room", True),
        ("*", "[meta]connection", False),
        ("[*]*", "[meta]connection", True),
        ("[*]*", "plain", True),
        ("chat:*", "chat:room", True),
        ("chat:*", "chat:room:sub", True),
        ("chat:*", "chat", False),
        ("chat:*", "chatter:room", False),
        ("chat:*", "[meta]chat:room", False),
        ("[*]chat:*", "[meta]chat:room", True),
        ("exact", "exact", True),
        ("exact", "exactly", False),
        ("[meta]*", "[meta]x", True),
        ("[meta]*", "x", False),
    ],
)
def test_allows_resource_patterns(pattern: str, channel: str, expected: bool) -> None:
    assert Capability({pattern: ["publish"]}).allows("publish", channel) is expected


def test_allows_operations() -> None:
    cap = Capability({"chat:*": ["subscribe", "history"], "news": ["*"]})
    assert cap.allows("subscribe", "chat:a")
    assert not cap.allows("publish", "chat:a")
    assert cap.allows("publish", "news")
    assert cap.allows("presence", "news")
    assert not cap.allows("publish", "other")


@pytest.mark.parametrize(
    ("requested", "key", "expected"),
    [
        ({"*": ["*"]}, {"chat:*": ["publish"]}, {"chat:*": ["publish"]}),
        ({"chat:a": ["publish", "subscribe"]}, {"chat:*": ["publish"]}, {"chat:a": ["publish"]}),
        ({"chat:*": ["*"]}, {"[*]*": ["subscribe"]}, {"chat:*": ["subscribe"]}),
        ({"a": ["publish"]}, {"b": ["publish"]}, {}),
        ({"a": ["publish"]}, {"a": ["subscribe"]}, {}),
        ({"[meta]x": ["*"]}, {"*": ["*"]}, {}),
        ({"x": ["publish"], "y": ["history"]}, {"*": ["publish"]}, {"x": ["publish"]}),
    ],
)
def test_intersection(
    requested: dict[str, list[str]], key: dict[str, list[str]], expected: dict[str, list[str]]
) -> None:
    result = Capability(requested) & Capability(key)
    assert result == Capability(expected)
    assert result.is_empty() is (expected == {})
    assert (Capability(key) & Capability(requested)) == result


@given(caps, caps, names, st.sampled_from(["publish", "subscribe", "history", "presence"]))
def test_intersection_never_widens(
    a: dict[str, list[str]], b: dict[str, list[str]], channel: str, op: str
) -> None:
    both = Capability(a) & Capability(b)
    if both.allows(op, channel):
        assert Capability(a).allows(op, channel)
        assert Capability(b).allows(op, channel)


def test_capability_is_immutable_and_hashable() -> None:
    cap = Capability({"a": ["publish"]})
    with pytest.raises(AttributeError):
        cap.x = 1  # type: ignore[attr-defined]
    assert hash(cap) == hash(Capability.parse('{"a":["publish"]}'))
    assert Capability.all().allows("publish", "[meta]anything")
