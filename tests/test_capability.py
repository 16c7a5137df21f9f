"""Capabilities: canonical text, parsing errors, Ably wildcard rules, intersection."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_tokenreq import Capability, InvalidCapability, canonical_capability
from flask_tokenreq.capability import MAX_CAPABILITY_LENGTH


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


def _js_canonical(cap: dict[str, list[str]]) -> str:
    """What ably-js writes, spelled out slowly: UTF-16 order everywhere, array-index
    keys first in numeric order, compact JSON with non-ASCII as is (no surrogates here)."""

    def utf16(text: str) -> bytes:
        return text.encode("utf-16-be")

    def order(key: str) -> tuple[int, int, bytes]:
        index = key.isascii() and key.isdigit() and (key == "0" or key[0] != "0")
        if index and int(key) <= 2**32 - 2:
            return (0, int(key), b"")
        return (1, 0, utf16(key))

    ordered = {key: sorted(cap[key], key=utf16) for key in sorted(cap, key=order)}
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))


# ASCII names (digits and symbols that sort before them included) and characters
# whose UTF-16 order differs from their code-point order (U+E000-U+FFFF vs astral).
mixed_text = st.text(st.sampled_from('09*: ~aZ"\\\x01é\ue000\uff5e\U0001f600\U00010000'))


@given(st.dictionaries(mixed_text, st.lists(mixed_text.filter(bool), max_size=4), max_size=6))
def test_canonical_matches_the_javascript_order(cap: dict[str, list[str]]) -> None:
    assert canonical_capability(cap) == _js_canonical(cap)
    digits = {str(n): ["x"] for n in (10, 9, 0, 4294967294, 4294967295)}
    assert canonical_capability({**cap, **digits}) == _js_canonical({**cap, **digits})


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


def test_surrogate_pair_held_as_two_code_points_is_one_character() -> None:
    # JavaScript sees one character either way; so must the canonical text.
    assert canonical_capability({"\ud83d\ude00": ["a"]}) == canonical_capability({"😀": ["a"]})
    assert canonical_capability({"\ud83dx": ["a"]}) == '{"\\ud83dx":["a"]}'


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = '{"[[[[{{": ["{{{[[["], "q\\"[[[": ["]]]"], "\\\\": ["x"]}'
    assert Capability.parse(text).to_dict() == {
        "[[[[{{": ["{{{[[["],
        'q"[[[': ["]]]"],
        "\\": ["x"],
    }


def _nested(depth: int) -> list[str]:
    """Capability-ish JSON texts nesting ``depth`` levels, closed and unclosed."""
    return [
        "[" * depth + "]" * depth,
        '{"a":' * depth + '["publish"]' + "}" * depth,
        '{"a":' + "[" * depth + "]" * depth + "}",
        "[" * depth,
    ]


@pytest.mark.parametrize("depth", [3, 2_000, 30_000, 100_000])
def test_deep_nesting_is_invalid_capability_not_recursion_error(depth: int) -> None:
    # json.loads would raise RecursionError (a 500) around 1,000 levels.
    for text in _nested(depth):
        for parse in (Capability.parse, canonical_capability):
            with pytest.raises(InvalidCapability) as info:
                parse(text)
            assert info.value.status == 400
            assert info.value.code == 40000
            if len(text) <= MAX_CAPABILITY_LENGTH:
                assert "nested too deeply" in info.value.message
            else:
                assert f"at most {MAX_CAPABILITY_LENGTH} characters" in info.value.message


def test_length_limit_is_exact() -> None:
    def text_of(length: int) -> str:
        return '{"' + "a" * (length - len('{"":["x"]}')) + '":["x"]}'

    assert len(text_of(MAX_CAPABILITY_LENGTH)) == MAX_CAPABILITY_LENGTH
    assert Capability.parse(text_of(MAX_CAPABILITY_LENGTH)).allows(
        "x", "a" * (MAX_CAPABILITY_LENGTH - 10)
    )
    with pytest.raises(InvalidCapability, match="too long"):
        Capability.parse(text_of(MAX_CAPABILITY_LENGTH + 1))


def test_not_quadratic_on_unterminated_strings() -> None:
    # Every quote starts a string that never ends; each is scanned once.
    for text in ['"' + '\\"' * 32_000, '{"a":["' + '\\"[' * 20_000]:
        with pytest.raises(InvalidCapability):
            Capability.parse(text)


def test_operations_must_be_a_list_not_a_string() -> None:
    # A string is iterable, but "publish" is not ["p", "u", ...].
    with pytest.raises(InvalidCapability, match="list of operations"):
        Capability({"a": "publish"})  # type: ignore[dict-item]
    with pytest.raises(InvalidCapability, match="list of operations"):
        Capability.parse({"a": {"publish": True}})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


def _parse_or_400(value: object) -> Capability | None:
    """``Capability.parse(value)``, or None when it raised InvalidCapability (400)."""
    try:
        return Capability.parse(value)  # type: ignore[arg-type]
    except InvalidCapability as exc:
        status = exc.status
    assert status == 400
    return None


@given(json_values)
def test_any_json_value_is_a_capability_or_invalid_capability(value: object) -> None:
    for candidate in (value, json.dumps(value)):
        cap = _parse_or_400(candidate)
        if cap is not None:
            assert Capability.parse(cap.canonical) == cap


@given(st.text())
def test_any_text_is_a_capability_or_invalid_capability(text: str) -> None:
    _parse_or_400(text)
