"""Ably capabilities: parsing, the canonical text ably-js signs, intersection, checks.

A capability maps resource patterns to operation lists::

    {"chat:*": ["publish", "subscribe"], "[*]*": ["history"]}

Patterns follow Ably's rules: an exact channel name; ``*`` (every channel that
is not ``[qualifier]``-qualified); ``ns:*`` (every channel under ``ns:``); a
``[qualifier]`` prefix (``[*]`` for any qualifier, so ``[*]*`` is everything).
The operation ``*`` stands for every operation.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring as _json_string
from types import MappingProxyType
from typing import Any

from .errors import BadRequest

#: Operations Ably defines. Others are accepted (Ably adds operations over
#: time) but must be non-empty strings.
OPERATIONS = frozenset(
    {
        "subscribe",
        "publish",
        "presence",
        "history",
        "stats",
        "push-subscribe",
        "push-admin",
        "channel-metadata",
        "privileged-headers",
        "object-subscribe",
        "object-publish",
        "annotation-subscribe",
        "annotation-publish",
        "*",
    }
)

_MAX_ARRAY_INDEX = 2**32 - 2
_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: A JSON string literal, and a bracket (see :func:`_nests_deeper`). The closing
#: quote is optional: an unterminated string runs to the end of the text once,
#: instead of being tried again from every later quote (quadratic time).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_BRACKET = re.compile(r"[][{}]")

#: Deepest nesting of capability JSON text: an object of lists is 2 deep.
MAX_CAPABILITY_DEPTH = 2
#: Longest capability JSON text parsed, in characters (64 KiB).
MAX_CAPABILITY_LENGTH = 65_536

#: The default of ``Capability()``: nothing granted.
_NO_GRANTS: Mapping[str, Sequence[str]] = MappingProxyType({})


class InvalidCapability(BadRequest):
    """The capability is not an object of resource -> list of operation strings."""

    default_message = "Invalid capability"


def _utf16_key(text: str) -> bytes:
    """Sort key giving JavaScript's default order (UTF-16 code units)."""
    return codecs.utf_16_be_encode(text, "surrogatepass")[0]


def _js_surrogates(text: str) -> str:
    """Write surrogates in JSON ``text`` as ``JSON.stringify`` does.

    A pair (which a Python str may hold as two code points) is one character
    to JavaScript, written as is; a lone surrogate is escaped as ``\\udxxx``.
    """
    if _SURROGATE.search(text) is None:
        return text
    joined = codecs.utf_16_be_decode(_utf16_key(text), "surrogatepass", True)[0]
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", joined)


def _is_array_index(key: str) -> bool:
    """Whether JavaScript treats ``key`` as an array index ("0", "17", not "01")."""
    return (
        key.isascii()
        and key.isdigit()
        and (key == "0" or key[0] != "0")
        and int(key) <= _MAX_ARRAY_INDEX
    )


def _js_key_order(key: str) -> tuple[int, int, bytes]:
    """Sort key for the order in which ``JSON.stringify`` writes a sorted object.

    ably-js sorts the keys (UTF-16 order), but a JavaScript object always
    lists its array-index keys ("0", "17", ...) first, in numeric order.
    """
    if _is_array_index(key):
        return (0, int(key), b"")
    return (1, 0, _utf16_key(key))


def _shown(resource: str) -> str:
    """``resource`` for an error message: quoted, cut to 60 characters."""
    return repr(resource if len(resource) <= 60 else resource[:57] + "...")


def _check_structure(value: object) -> dict[str, tuple[str, ...]]:
    """The grants in ``value``, checked: resource name -> operation names."""
    if not isinstance(value, Mapping):
        raise InvalidCapability(
            "capability must be a JSON object mapping resource names to lists of operations"
        )
    grants: dict[str, tuple[str, ...]] = {}
    for resource, ops in value.items():
        if not isinstance(resource, str):
            raise InvalidCapability("capability resource names must be strings")
        if not isinstance(ops, (list, tuple)):
            raise InvalidCapability(
                f"capability for {_shown(resource)} must be a list of operations, "
                'e.g. ["subscribe"]'
            )
        for op in ops:
            if not isinstance(op, str) or not op:
                raise InvalidCapability(
                    f"capability for {_shown(resource)} must list operations as non-empty strings"
                )
        grants[resource] = tuple(ops)
    return grants


def _decode(text: str) -> Any:
    """Parse capability JSON text; refuses text too long or nested too deeply first.

    ``json.loads`` recurses once per level of nesting, so text nested
    thousands deep would raise ``RecursionError`` (a 500) before the shape
    could be checked. A capability nests exactly two deep (an object of
    lists), so anything deeper is refused without being parsed.
    """
    if len(text) > MAX_CAPABILITY_LENGTH:
        raise InvalidCapability(
            f"capability is too long: at most {MAX_CAPABILITY_LENGTH} characters of JSON"
        )
    if _nests_deeper(text, MAX_CAPABILITY_DEPTH):
        raise InvalidCapability(
            "capability is nested too deeply: it must be an object of lists of operation "
            'names, e.g. {"chat:*": ["subscribe"]}'
        )
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidCapability("capability is not valid JSON") from None


def _nests_deeper(text: str, limit: int) -> bool:
    """Whether the brackets of JSON ``text`` (outside strings) nest deeper than ``limit``."""
    depth = 0
    for bracket in _BRACKET.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def canonical_capability(value: str | Mapping[str, Any] | Capability) -> str:
    """The capability text ably-js ``createTokenRequest`` signs (its ``c14n``).

    Keys and each operation list sorted by UTF-16 code units, duplicates kept,
    compact separators, non-ASCII as is. Byte-identical to ably-js.
    """
    if isinstance(value, Capability):
        return value.canonical
    if isinstance(value, str):
        value = _decode(value)
    return _canonical_grants(_check_structure(value))


def _canonical_grants(grants: Mapping[str, Sequence[str]]) -> str:
    """Canonical text of already validated grants.

    Written first in code-point order, which is UTF-16 order for ASCII text;
    text with any other character is written again in UTF-16 order.
    """
    text = _written(grants, None)
    if text.isascii():  # and so holds no surrogate either
        return text
    return _js_surrogates(_written(grants, _utf16_key))


def _written(grants: Mapping[str, Sequence[str]], order: Callable[[str], bytes] | None) -> str:
    """``grants`` as compact JSON, keys and operations sorted by ``order``
    (``None``: code points), array-index keys first (see :func:`_js_key_order`)."""
    # _json_string is json's own string writer (json.dumps with ensure_ascii=False):
    # JSON.stringify's escapes, except for surrogates (see _js_surrogates).
    resources = sorted(grants, key=order)
    if any(map(str.isdigit, resources)):  # maybe an array index
        resources.sort(key=_js_key_order)
    parts = []
    for resource in resources:
        ops = ",".join(map(_json_string, sorted(grants[resource], key=order)))
        parts.append(f"{_json_string(resource)}:[{ops}]")
    return "{" + ",".join(parts) + "}"


def _split_qualifier(pattern: str) -> tuple[str | None, str]:
    if pattern.startswith("["):
        end = pattern.find("]")
        if end > 0:
            return pattern[1:end], pattern[end + 1 :]
    return None, pattern


def _covers(outer: str, inner: str) -> bool:
    """Whether every channel matched by pattern ``inner`` is matched by ``outer``."""
    if outer == inner:
        return True
    oq, orest = _split_qualifier(outer)
    iq, irest = _split_qualifier(inner)
    if oq != "*" and oq != iq:
        return False
    if orest == irest or orest == "*":
        return True
    return orest.endswith(":*") and irest.startswith(orest[:-1])


class Capability:
    """A parsed capability. Immutable; compare with ``==``; ``str()`` is canonical."""

    __slots__ = ("_canonical", "_grants")

    _grants: dict[str, tuple[str, ...]]
    _canonical: str | None

    def __init__(self, grants: Mapping[str, Sequence[str]] = _NO_GRANTS) -> None:
        object.__setattr__(self, "_grants", _check_structure(grants))
        object.__setattr__(self, "_canonical", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Capability is immutable")

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | Capability | None) -> Capability:
        """Parse JSON text or a mapping; raises :class:`InvalidCapability`.

        JSON text longer than :data:`MAX_CAPABILITY_LENGTH` or nested deeper
        than :data:`MAX_CAPABILITY_DEPTH` is refused before it is parsed.
        """
        if value is None:
            return cls()
        if isinstance(value, Capability):
            return value
        if isinstance(value, str):
            return cls(_decode(value))
        return cls(value)

    @classmethod
    def all(cls) -> Capability:
        """Everything: ``{"[*]*": ["*"]}``."""
        return cls({"[*]*": ["*"]})

    @property
    def canonical(self) -> str:
        """The canonical text (what ably-js would sign for this capability)."""
        if self._canonical is None:
            object.__setattr__(self, "_canonical", _canonical_grants(self._grants))
        assert self._canonical is not None
        return self._canonical

    def to_dict(self) -> dict[str, list[str]]:
        return {r: list(ops) for r, ops in self._grants.items()}

    def is_empty(self) -> bool:
        return not any(self._grants.values())

    def resources(self) -> list[str]:
        return list(self._grants)

    def allows(self, operation: str, resource: str) -> bool:
        """Whether ``operation`` on channel ``resource`` is granted."""
        for pattern, ops in self._grants.items():
            if (operation in ops or "*" in ops) and _covers(pattern, resource):
                return True
        return False

    def intersect(self, other: Capability | str | Mapping[str, Any]) -> Capability:
        """What both allow (Ably's rule for requested ∩ key capability).

        The narrower pattern of each overlapping pair is kept, with the
        operations both grant (``*`` yielding to the other side's list).
        """
        other = Capability.parse(other)
        merged: dict[str, set[str]] = {}
        for mine, my_ops in self._grants.items():
            for theirs, their_ops in other._grants.items():
                if _covers(theirs, mine):
                    resource = mine
                elif _covers(mine, theirs):
                    resource = theirs
                else:
                    continue
                if "*" in their_ops:
                    ops = set(my_ops)
                elif "*" in my_ops:
                    ops = set(their_ops)
                else:
                    ops = set(my_ops) & set(their_ops)
                if ops:
                    merged.setdefault(resource, set()).update(ops)
        return Capability({r: sorted(ops, key=_utf16_key) for r, ops in merged.items()})

    __and__ = intersect

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Capability):
            return NotImplemented
        return _normal(self) == _normal(other)

    def __hash__(self) -> int:
        return hash(frozenset(_normal(self).items()))

    def __str__(self) -> str:
        return self.canonical

    def __repr__(self) -> str:
        return f"Capability({self.canonical})"


def _normal(cap: Capability) -> dict[str, frozenset[str]]:
    return {r: frozenset(ops) for r, ops in cap._grants.items() if ops}
