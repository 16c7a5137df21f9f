"""Reading and validating ``TOKENREQ_*`` settings.

Settings come from ``app.config`` first, then the environment. Each reader
raises :class:`~flask_tokenreq.errors.ConfigError` naming the setting when the
value has the wrong type, so a mistake shows at ``init_app``, not at the first
request. Values are never echoed, since some are secrets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from .errors import ConfigError

PREFIX = "TOKENREQ_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def from_env(config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Copy every ``TOKENREQ_*`` environment variable into ``config``.

    A value that parses as JSON is stored parsed (``60000`` becomes an int,
    ``["a"]`` a list); anything else is stored as the string.
    """
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if not name.startswith(PREFIX):
            continue
        try:
            config[name] = json.loads(raw)
        except ValueError:
            config[name] = raw


def lookup(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """``config[name]``, else the environment variable, else ``default``."""
    value = config.get(name)
    if value is None:
        value = os.environ.get(name)
    return default if value is None else value


def get_int(
    config: Mapping[str, Any], name: str, default: int, *, minimum: int | None = None
) -> int:
    """An integer setting; a bool, a float with a fraction or a non-number is an error."""
    value = lookup(config, name, default)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got a non-numeric string") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def get_bool(config: Mapping[str, Any], name: str, default: bool) -> bool:
    value = lookup(config, name, default)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {type(value).__name__}")
    return value


def get_str(config: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = lookup(config, name, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}")
    return value


def get_str_list(
    config: Mapping[str, Any], name: str, default: list[str] | None = None
) -> list[str]:
    """A list-of-strings setting. A bare string is an error, not a list of characters.

    From the environment, a JSON list is expected (``'["https://a.example"]'``).
    """
    value = config.get(name)
    if value is None:
        raw = os.environ.get(name)
        if raw is not None:
            try:
                value = json.loads(raw)
            except ValueError:
                raise ConfigError(
                    f"{name} must be a JSON list of strings in the environment, "
                    f"e.g. {name}='[\"https://app.example\"]'"
                ) from None
    if value is None:
        return list(default or [])
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigError(
            f"{name} must be a list of strings, got {type(value).__name__}"
            + (" (wrap a single value in a list)" if isinstance(value, str) else "")
        )
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{name} must contain only strings, got {type(item).__name__}")
    return items


def check_key(name: str, key: object) -> tuple[str, str]:
    """Validate an Ably key ``appId.keyId:secret``; returns (key name, secret).

    The error names the setting and the expected shape, never the value.
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{name} must be an Ably key string like 'appId.keyId:secret'")
    key_name, sep, secret = key.partition(":")
    if not sep or not secret:
        raise ConfigError(f"{name} is malformed: expected 'appId.keyId:secret' (no ':' found)")
    app_id, dot, key_id = key_name.partition(".")
    if not dot or not app_id or not key_id:
        raise ConfigError(f"{name} is malformed: the key name must be 'appId.keyId' (no '.' found)")
    if any(c in key for c in "\r\n\t "):
        raise ConfigError(f"{name} is malformed: it contains whitespace")
    return key_name, secret
