"""Deprecated: use :mod:`flask_tokenreq.settings` (kept for one release).

``from_env`` moved to :func:`flask_tokenreq.settings.from_env`; settings are
read with :func:`flask_tokenreq.settings.read`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .settings import _int, boolean, from_env, str_list

warnings.warn(
    "flask_tokenreq.config is deprecated and will be removed in the next release; "
    "use flask_tokenreq.settings (settings.from_env, settings.read) instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["from_env", "get_bool", "get_int", "get_str", "get_str_list", "lookup"]


def lookup(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """``config[name]``, else the environment variable, else ``default``."""
    value = config.get(name)
    if value is None:
        value = os.environ.get(name)
    return default if value is None else value


def get_int(
    config: Mapping[str, Any], name: str, default: int, *, minimum: int | None = None
) -> int:
    value = _int(name, lookup(config, name, default))
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def get_bool(config: Mapping[str, Any], name: str, default: bool) -> bool:
    return boolean(name, lookup(config, name, default))


def get_str(config: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = lookup(config, name, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}")
    return value


def get_str_list(
    config: Mapping[str, Any], name: str, default: list[str] | None = None
) -> list[str]:
    value = lookup(config, name)
    if isinstance(value, str) and name in os.environ and config.get(name) is None:
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{name} must be a JSON list of strings in the environment") from None
    if value is None:
        return list(default or [])
    result: list[str] = str_list()(name, value)
    return result
