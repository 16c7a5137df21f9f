"""Ably capabilities: parsing, the canonical text ably-js signs, intersection, checks.

A capability maps resource patterns to operation lists::

    {"chat:*": ["publish", "subscribe"], "[*]*": ["history"]}

Patterns follow Ably's rules: an exact channel name; ``*`` (every channel that
is not ``[qualifier]``-qualified); ``ns:*`` (every channel under ``ns:``); a
``[qualifier]`` prefix (``[*]`` for any qualifier, so ``[*]*`` is everything).
The operation ``*`` stands for every operation.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring as _json_string
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

_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_MAX_ARRAY_INDEX = 2**32 - 2
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class InvalidCapability(BadRequest):
    """The capability is not an object of resource -> list of operation strings."""

    default_message = "Invalid capability"


def _utf16_key(text: str) -> bytes:
    """Sort key giving JavaScript's default order (UTF-16 code units)."""
    return text.encode("utf-16-be", "surrogatepass")


def _js_string(text: str) -> str:
    """``JSON.stringify`` of one string: non-ASCII as is, lone surrogates escaped."""
    # Join surrogate pairs a Python str may hold as two code points, as JS sees them.
    text = text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")
    out = json.dumps(text, ensure_ascii=False)
    if _LONE_SURROGATE.search(out):
        out = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    return out


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) <= _MAX_ARRAY_INDEX


def _js_key_order(keys: Iterable[str]) -> list[str]:
    """Keys in the order ``JSON.stringify`` writes a sorted object.

    ably-js sorts the keys, but a JavaScript object always lists its
    array-index keys ("0", "17", ...) first in numeric order.
    """
    ordered = sorted(keys, key=_utf16_key)
    indexes = sorted((k for k in ordered if _is_array_index(k)), key=int)
    return indexes + [k for k in ordered if not _is_array_index(k)]


def _check_structure(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise InvalidCapability(
            "capability must be a JSON object mapping resource names to lists of operations"
        )
    result: dict[str, list[str]] = {}
    for resource, ops in value.items():
        if not isinstance(resource, str):
            raise InvalidCapability("capability resource names must be strings")
        if isinstance(ops, (str, bytes)) or not isinstance(ops, (list, tuple)):
            raise InvalidCapability(
                f'capability for {resource!r} must be a list of operations, e.g. ["subscribe"]'
            )
        for op in ops:
            if not isinstance(op, str) or not op:
                raise InvalidCapability(
                    f"capability for {resource!r} must list operations as non-empty strings"
                )
        result[resource] = list(ops)
    return result


def _load(value: str | Mapping[str, Any] | Capability) -> dict[str, list[str]]:
    if isinstance(value, Capability):
        return {r: list(ops) for r, ops in value._grants.items()}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidCapability("capability is not valid JSON") from None
    return _check_structure(value)


def canonical_capability(value: str | Mapping[str, Any] | Capability) -> str:
    """The capability text ably-js ``createTokenRequest`` signs (its ``c14n``).

    Keys and each operation list sorted by UTF-16 code units, duplicates kept,
    compact separators, non-ASCII as is. Byte-identical to ably-js.
    """
    # Fast paths (results identical to the general one below): JSON text and
    # plain dicts of lists of str are looked up in small caches, since signers
    # pass the same capabilities again and again.
    if type(value) is str:
        if len(value) <= _CACHE_MAX_TEXT:
            return _canonical_text(value)
    elif type(value) is dict:
        last = _last_plain
        if last is not None and value == last[0]:
            return last[1]
        items = _plain_items(value)
        if items is not None:
            text = _canonical_items(items)
            _remember_plain(items, text)
            return text
    elif isinstance(value, Capability):
        return value.canonical  # computed once per object
    return _canonical_grants(_load(value))


#: Longest capability text kept in the cache (longer ones are canonicalised each time).
_CACHE_MAX_TEXT = 2048
_CACHE_MAX_ITEMS = 32


def _plain_items(value: dict[Any, Any]) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """``value`` as a hashable cache key when every name and operation is exactly a
    ``str`` and every operation list a list or tuple; else ``None`` (general path)."""
    if len(value) > _CACHE_MAX_ITEMS:
        return None
    items = []
    for resource, ops in value.items():
        kind = type(ops)
        if type(resource) is not str or (kind is not list and kind is not tuple):
            return None
        if len(ops) > _CACHE_MAX_ITEMS:
            return None
        for op in ops:
            if type(op) is not str:
                return None
        items.append((resource, tuple(ops)))
    return tuple(items)


#: The last plain dict canonicalised (a copy) and its text: the common case of
#: one capability signed again and again costs one dict comparison.
_last_plain: tuple[dict[str, list[str]], str] | None = None


def _remember_plain(items: tuple[tuple[str, tuple[str, ...]], ...], text: str) -> None:
    global _last_plain
    _last_plain = ({resource: list(ops) for resource, ops in items}, text)


@functools.lru_cache(maxsize=256)
def _canonical_text(text: str) -> str:
    return _canonical_grants(_load(text))


@functools.lru_cache(maxsize=256)
def _canonical_items(items: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    return _canonical_grants(_check_structure(dict(items)))


def _canonical_grants(grants: Mapping[str, Iterable[str]]) -> str:
    """Canonical text of already validated grants."""
    if all(r.isascii() and all(op.isascii() for op in ops) for r, ops in grants.items()):
        # ASCII only: code-point order is UTF-16 order, and there are no
        # surrogates to escape, so the C JSON string encoder gives the same text.
        parts = [
            _json_string(resource) + ":[" + ",".join(map(_json_string, sorted(ops))) + "]"
            for resource, ops in _js_key_order_ascii(grants)
        ]
        return "{" + ",".join(parts) + "}"
    parts = [
        _js_string(resource)
        + ":["
        + ",".join(_js_string(op) for op in sorted(grants[resource], key=_utf16_key))
        + "]"
        for resource in _js_key_order(grants)
    ]
    return "{" + ",".join(parts) + "}"


def _js_key_order_ascii(
    grants: Mapping[str, Iterable[str]],
) -> list[tuple[str, Iterable[str]]]:
    """:func:`_js_key_order` for ASCII keys, with their values."""
    ordered = sorted(grants.items())
    if not any(r[:1].isdigit() and _is_array_index(r) for r, _ in ordered):
        return ordered
    indexes = sorted(
        (item for item in ordered if _is_array_index(item[0])), key=lambda i: int(i[0])
    )
    return indexes + [item for item in ordered if not _is_array_index(item[0])]


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

    def __init__(self, grants: Mapping[str, Iterable[str]] | None = None) -> None:
        checked = _check_structure({r: list(ops) for r, ops in (grants or {}).items()})
        object.__setattr__(self, "_grants", {r: tuple(ops) for r, ops in checked.items()})
        object.__setattr__(self, "_canonical", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Capability is immutable")

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | Capability | None) -> Capability:
        """Parse JSON text or a mapping; raises :class:`InvalidCapability`."""
        if value is None:
            return cls()
        if isinstance(value, Capability):
            return value
        if cls is Capability:
            # Capabilities are immutable: equal inputs may share one parsed object
            # (and its cached canonical text). Same results as the line below.
            if type(value) is str:
                if len(value) <= _CACHE_MAX_TEXT:
                    return _parse_text(value)
            elif type(value) is dict:
                last = _last_parsed
                if last is not None and list(value.items()) == last[0]:
                    return last[1]
                items = _plain_items(value)
                if items is not None:
                    parsed = Capability(_check_structure(value))
                    _remember_parsed(items, parsed)
                    return parsed
        return cls(_load(value))

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


#: The last plain dict parsed (its items, copied) and the result; see Capability.parse.
_last_parsed: tuple[list[tuple[str, list[str]]], Capability] | None = None


def _remember_parsed(items: tuple[tuple[str, tuple[str, ...]], ...], parsed: Capability) -> None:
    global _last_parsed
    _last_parsed = ([(resource, list(ops)) for resource, ops in items], parsed)


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> Capability:
    return Capability(_load(text))
