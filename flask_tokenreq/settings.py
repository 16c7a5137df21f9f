"""Every ``TOKENREQ_*`` setting in one place: its name, default, type and meaning.

:data:`SETTINGS` is the registry; :func:`read` is how the package reads a
setting: ``app.config[name]``, else the environment variable of the same name,
else the default, validated by the setting's type. A wrong value is a
:class:`~flask_tokenreq.errors.ConfigError` that names the setting and the fix,
raised at ``init_app`` rather than at the first request. Values are never
echoed, since some are secrets.

Durations say their unit in their name's documentation: ``ms`` settings are
milliseconds (as Ably's ``ttl``), ``s`` settings seconds. A millisecond
setting with a value that only makes sense as seconds (``TOKENREQ_TTL=3600``)
is refused with the likely fix spelled out.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

PREFIX = "TOKENREQ_"

#: Ably refuses a token ttl above 24 hours.
MAX_TTL_MS = 86_400_000
#: Default shortest token ttl (10 s): below it a ttl is nearly always seconds
#: written where milliseconds are meant (``TOKENREQ_TTL=3600``, ``?ttl=60``).
MIN_TTL_MS = 10_000

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

Check = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: what it is called, its default, how it is checked, what it does."""

    name: str
    #: The value when unset (``None``: unset means "not configured").
    default: Any
    #: ``check(name, value) -> value``: validates (and normalises) a configured value.
    check: Check
    #: One line for the README's configuration table.
    doc: str
    #: ``issuer``, ``provider``, ``keys`` or ``admin``: which table it belongs to.
    role: str
    #: The default as the README shows it (when ``repr(default)`` would not do).
    shown_default: str | None = None
    #: Read from the environment as text (strings) rather than as JSON.
    text: bool = False
    #: Another (millisecond) setting this one may not be below, e.g. ``TOKENREQ_MIN_TTL``.
    at_least: str | None = None

    @property
    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "—"
        return f"`{json.dumps(self.default)}`"


# -- checks -----------------------------------------------------------------------------


def _int(name: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got a non-numeric string") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__}")
    return value


def integer(minimum: int | None = None, maximum: int | None = None, unit: str = "") -> Check:
    """An integer in ``[minimum, maximum]``; ``unit`` is named in errors."""
    suffix = f" {unit}" if unit else ""

    def check(name: str, value: Any) -> int:
        number = _int(name, value)
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}{suffix}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name} must be at most {maximum}{suffix}, got {number}")
        return number

    return check


def milliseconds(minimum: int = 1, maximum: int | None = MAX_TTL_MS) -> Check:
    """A duration in milliseconds in ``[minimum, maximum]``."""

    def check(name: str, value: Any) -> int:
        number = _int(name, value)
        _check_floor(name, number, minimum, maximum=maximum)
        if maximum is not None and number > maximum:
            limit = " (24 hours, Ably's limit)" if maximum == MAX_TTL_MS else ""
            raise ConfigError(f"{name} must be at most {maximum} ms{limit}, got {number}")
        return number

    return check


def _check_floor(
    name: str,
    number: int,
    floor: int,
    floor_name: str | None = None,
    *,
    maximum: int | None = MAX_TTL_MS,
) -> None:
    """Refuse a millisecond value under ``floor``, saying so when it looks like seconds.

    It looks like seconds when, read as seconds, it would be allowed: ``floor``
    to ``maximum`` once multiplied by 1000.
    """
    if number >= floor:
        return
    hint = ""
    if floor <= number * 1000 and (maximum is None or number * 1000 <= maximum):
        hint = f"; durations are in milliseconds: {number} s is {number * 1000}"
    where = f" ({floor_name})" if floor_name else ""
    raise ConfigError(f"{name} must be at least {floor} ms{where}, got {number}{hint}")


def boolean(name: str, value: Any) -> bool:
    """``True``/``False``, ``1``/``0`` (the environment's ``1`` is parsed to an int), or
    the text ``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``."""
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, int) or value not in (0, 1):  # bool is an int
        raise ConfigError(f"{name} must be true or false, got {type(value).__name__}")
    return bool(value)


def string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {type(value).__name__}")
    return value


def secret_string(minimum_bytes: int) -> Check:
    """A secret: a string of at least ``minimum_bytes`` bytes (UTF-8)."""

    def check(name: str, value: Any) -> str:
        if isinstance(value, bytes):
            raise ConfigError(f"{name} must be a string, not bytes")
        text = string(name, value)
        if len(text.encode("utf-8", "surrogatepass")) < minimum_bytes:
            raise ConfigError(
                f"{name} is too short: at least {minimum_bytes} bytes are required "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return text

    return check


def path_prefix(allow_empty: bool) -> Check:
    """A URL path prefix: empty (the root) or starting with ``/``; trailing ``/`` dropped."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {type(value).__name__}")
        if not value.strip("/") and allow_empty:
            return ""
        if not value.startswith("/"):
            raise ConfigError(f"{name} must start with '/', got {value!r}")
        return value.rstrip("/")

    return check


def http_url(name: str, value: Any) -> str:
    text = string(name, value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL")
    return text.rstrip("/")


def store_url(name: str, value: Any) -> str:
    """A storage URL (``memory://``, ``sqlite:///...``, ``postgresql://...``, ``redis://...``)."""
    text = string(name, value).strip()
    if ":" not in text:
        raise ConfigError(
            f"{name} must be a URL such as memory://, sqlite:///path, postgresql://... "
            "or redis://..."
        )
    return text


def seconds_float(maximum: float) -> Check:
    def check(name: str, value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{name} must be a number of seconds") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number of seconds")
        if math.isnan(value) or not 0 < value <= maximum:
            raise ConfigError(f"{name} must be between 0 and {maximum:g} seconds")
        return float(value)

    return check


def choice(*options: str) -> Check:
    def check(name: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    return check


def str_list(item: Check | None = None) -> Check:
    """A list of strings. A bare string is an error (not a list of characters)."""

    def check(name: str, value: Any) -> list[str]:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            hint = " (wrap a single value in a list)" if isinstance(value, str) else ""
            raise ConfigError(f"{name} must be a list of strings, got {type(value).__name__}{hint}")
        items = list(value)
        for index, entry in enumerate(items):
            if not isinstance(entry, str):
                raise ConfigError(f"{name} must contain only strings, got {type(entry).__name__}")
            if item is not None:
                items[index] = item(f"{name}[{index}]", entry)
        return items

    return check


def origin(name: str, value: Any) -> str:
    """An exact origin such as ``https://app.example`` (no ``*``, no path)."""
    text = string(name, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        list_name = name.partition("[")[0]
        raise ConfigError(
            f"{list_name} must list exact origins like 'https://app.example' (no '*', no path)"
        )
    return text.rstrip("/")


def ably_key(name: str, value: Any) -> str:
    """An Ably key ``appId.keyId:secret`` with a secret of at least 32 bytes."""
    from .keys.base import configured_key

    configured_key(name, value)
    return str(value)


def capability(name: str, value: Any) -> Any:
    """A capability (JSON text or a mapping), returned parsed."""
    from .capability import Capability, InvalidCapability

    if not isinstance(value, (str, Mapping, Capability)):
        raise ConfigError(f"{name} must be a JSON object of channel -> operations")
    try:
        parsed = Capability.parse(value)
    except InvalidCapability as exc:
        raise ConfigError(f"{name} is invalid: {exc.message}") from None
    if parsed.is_empty():
        raise ConfigError(f"{name} grants nothing")
    return parsed


def provider_keys(name: str, value: Any) -> Any:
    """``TOKENREQ_PROVIDER_KEYS``: returned as a :class:`~flask_tokenreq.keys.StaticKeyStore`."""
    from .keys.static import StaticKeyStore

    return StaticKeyStore.from_config(value, setting=name)


def app_id(name: str, value: Any) -> str:
    """The app id of managed key names: 1 to 64 of ``A-Z a-z 0-9 _ -`` (no ``.`` or ``:``)."""
    from .keys.secret import valid_app_id

    if not valid_app_id(value):
        raise ConfigError(f"{name} must be 1 to 64 of A-Z a-z 0-9 _ - (no '.' or ':')")
    return str(value)


def fernet_keys(name: str, value: Any) -> list[str]:
    """Fernet keys, newest first: 32 url-safe base64 bytes each."""
    import base64
    import binascii

    keys: list[str] = str_list()(name, value)
    if not keys:
        raise ConfigError(f"{name} must list at least one Fernet key")
    for index, key in enumerate(keys):
        try:
            raw = base64.urlsafe_b64decode(key.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"{name}[{index}] is not a Fernet key (32 url-safe base64 bytes); make one "
                "with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            )
    return keys


# -- the registry -----------------------------------------------------------------------


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


SETTINGS: dict[str, Setting] = _settings(
    # The issuer (your app's server).
    Setting(
        "TOKENREQ_KEY",
        None,
        ably_key,
        "the Ably key `appId.keyId:secret` that signs TokenRequests (secret ≥ 32 bytes). "
        "Missing: the endpoint answers 500 naming the setting; malformed: `ConfigError` at "
        "`init_app`",
        "issuer",
        shown_default="— (required)",
        text=True,
    ),
    Setting(
        "TOKENREQ_TTL",
        3_600_000,
        milliseconds(),
        "ttl of what the issuer signs, in ms, and the most a request may ask for "
        "(`TOKENREQ_MIN_TTL` to 24 h)",
        "issuer",
        at_least="TOKENREQ_MIN_TTL",
        shown_default="`3600000` ms",
    ),
    Setting(
        "TOKENREQ_MIN_TTL",
        MIN_TTL_MS,
        milliseconds(minimum=1),
        "shortest ttl a request may ask for and the TTL settings accept, in ms: a smaller "
        "value is nearly always seconds written as milliseconds (40003 / `ConfigError`)",
        "issuer",
        shown_default="`10000` ms",
    ),
    Setting(
        "TOKENREQ_ISSUER_URL_PREFIX",
        "/tokenreq",
        path_prefix(allow_empty=False),
        "where `init_app` registers the blueprint (`url_prefix=` wins)",
        "issuer",
        shown_default="`/tokenreq`",
        text=True,
    ),
    Setting(
        "TOKENREQ_ISSUER_CAPABILITY",
        None,
        capability,
        "capability for every user when no `@capability_loader` is registered; with "
        "neither, nothing is issued",
        "issuer",
    ),
    Setting(
        "TOKENREQ_CORS_ORIGINS",
        [],
        str_list(origin),
        "exact origins allowed to call the token endpoint with credentials",
        "issuer",
    ),
    Setting(
        "TOKENREQ_PROVIDER_URL",
        None,
        http_url,
        "provider base URL for `format=token` (the issuer exchanges itself)",
        "issuer",
        text=True,
    ),
    Setting(
        "TOKENREQ_PROVIDER_TIMEOUT",
        10.0,
        seconds_float(300),
        "timeout of that exchange, in seconds",
        "issuer",
        shown_default="`10` s",
    ),
    # The provider (exchange and guarded resources).
    Setting(
        "TOKENREQ_PROVIDER_KEYS",
        None,
        provider_keys,
        'static keys: a list of `"appId.keyId:secret"` (any capability) or `{"key": ..., '
        '"capability": {...}, "revoked": bool, "expires": ms}`',
        "provider",
        shown_default="— (unless `keys=` or managed keys)",
    ),
    Setting(
        "TOKENREQ_SIGNING_SECRET",
        None,
        secret_string(32),
        "signs the provider's JWTs (HS256); at least 32 bytes",
        "provider",
        shown_default="— (required for HS256)",
        text=True,
    ),
    Setting(
        "TOKENREQ_SIGNING_SECRET_FALLBACKS",
        [],
        str_list(secret_string(32)),
        "earlier signing secrets, newest first: their tokens verify until they expire "
        "(rotate like Flask's `SECRET_KEY_FALLBACKS`)",
        "provider",
    ),
    Setting(
        "TOKENREQ_TOKEN_ALGORITHM",
        None,
        choice("HS256", "EdDSA", "ES256"),
        "`HS256`, or `EdDSA` / `ES256` with `TOKENREQ_SIGNING_KEY`; then "
        "`GET /.well-known/jwks.json` serves the public keys",
        "provider",
        shown_default="`HS256` (or the key's type)",
        text=True,
    ),
    Setting(
        "TOKENREQ_SIGNING_KEY",
        None,
        string,
        "PEM private key (text or file path) for EdDSA/ES256",
        "provider",
        text=True,
    ),
    Setting(
        "TOKENREQ_SIGNING_KEY_FALLBACKS",
        [],
        str_list(string),
        "earlier PEM keys (or paths), newest first: their tokens verify until they expire, "
        "and the JWKS lists them",
        "provider",
    ),
    Setting(
        "TOKENREQ_SIGNING_KEY_ID",
        None,
        string,
        "`kid` of the provider's tokens",
        "provider",
        shown_default="derived (JWK thumbprint)",
        text=True,
    ),
    Setting(
        "TOKENREQ_TOKEN_ISSUER",
        "flask-tokenreq",
        string,
        "`iss` claim, checked on verify",
        "provider",
        shown_default="`flask-tokenreq`",
        text=True,
    ),
    Setting(
        "TOKENREQ_TIMESTAMP_WINDOW",
        120,
        integer(minimum=1, maximum=3600, unit="s"),
        "how far a TokenRequest's timestamp may be from now, both directions, in seconds",
        "provider",
        shown_default="`120` s",
    ),
    Setting(
        "TOKENREQ_DEFAULT_TTL",
        3_600_000,
        milliseconds(),
        "ttl when the TokenRequest has none, in ms",
        "provider",
        at_least="TOKENREQ_MIN_TTL",
        shown_default="`3600000` ms",
    ),
    Setting(
        "TOKENREQ_MAX_TTL",
        MAX_TTL_MS,
        milliseconds(),
        "longest ttl accepted, in ms (40003 above)",
        "provider",
        at_least="TOKENREQ_MIN_TTL",
        shown_default="`86400000` ms",
    ),
    Setting(
        "TOKENREQ_LEEWAY",
        5,
        integer(minimum=0, maximum=300, unit="s"),
        "clock leeway when verifying tokens, in seconds",
        "provider",
        shown_default="`5` s",
    ),
    Setting(
        "TOKENREQ_MAX_TOKEN_BYTES",
        8192,
        integer(minimum=256, maximum=1_048_576, unit="bytes"),
        "longer bearer tokens are refused before parsing",
        "provider",
    ),
    Setting(
        "TOKENREQ_MAX_BODY_BYTES",
        16_384,
        integer(minimum=256, maximum=1_048_576, unit="bytes"),
        "largest request body the provider reads (chunked or not)",
        "provider",
    ),
    Setting(
        "TOKENREQ_NONCE_STORE",
        None,
        store_url,
        "`memory://` (one process), `sqlite:///…`, `postgresql://…`, `redis://…`",
        "provider",
        shown_default="SQLite file in the instance folder",
        text=True,
    ),
    Setting(
        "TOKENREQ_PROVIDER_URL_PREFIX",
        "",
        path_prefix(allow_empty=True),
        "where `init_app` registers the provider blueprint",
        "provider",
        shown_default='`""` (root)',
        text=True,
    ),
    Setting(
        "TOKENREQ_PROVIDER_CORS_ORIGINS",
        [],
        str_list(origin),
        "exact origins allowed to call the provider from a browser",
        "provider",
    ),
    # Managed keys and the audit log.
    Setting(
        "TOKENREQ_DATABASE_URL",
        None,
        store_url,
        "SQL database of managed keys, token revocations and the audit log (PostgreSQL "
        "for several hosts); set without managed keys, it holds only the audit log",
        "keys",
        shown_default="`tokenreq.sqlite3` in the instance folder",
        text=True,
    ),
    Setting(
        "TOKENREQ_KEY_ENCRYPTION_KEYS",
        None,
        fernet_keys,
        "Fernet keys that encrypt key secrets at rest, newest first; setting it turns "
        "managed keys on",
        "keys",
        shown_default="— (managed keys off)",
    ),
    Setting(
        "TOKENREQ_APP_ID",
        "tokenreq",
        app_id,
        "the `appId` of new managed keys (`appId.keyId`): 1 to 64 of `A-Z a-z 0-9 _ -`",
        "keys",
        shown_default="`tokenreq`",
        text=True,
    ),
    Setting(
        "TOKENREQ_AUDIT",
        True,
        boolean,
        "write the audit log (`tokenreq_audit`) when a database is in use (managed keys "
        "on, or `TOKENREQ_DATABASE_URL` set)",
        "keys",
    ),
    Setting(
        "TOKENREQ_AUDIT_RETENTION",
        90,
        integer(minimum=1, maximum=36_500, unit="days"),
        "audit rows older than this many days are purged",
        "keys",
        shown_default="`90` days",
    ),
)


def read(config: Mapping[str, Any], name: str) -> Any:
    """The validated value of setting ``name``: ``config``, else the environment, else default.

    Raises :class:`ConfigError` naming the setting when the value is wrong,
    and ``KeyError`` for a name that is not in :data:`SETTINGS` (a bug).
    """
    setting = SETTINGS[name]
    value = config.get(name)
    if value is None:
        raw = os.environ.get(name)
        if raw is not None and raw != "":
            value = raw if setting.text else _from_text(name, raw)
    if value is None:
        value = setting.default
        if isinstance(value, list):
            return list(value)
    else:
        value = setting.check(name, value)
    if setting.at_least is not None and value is not None:
        _check_floor(name, value, read(config, setting.at_least), setting.at_least)
    return value


def check_both_roles(config: Mapping[str, Any]) -> None:
    """Settings of an app that is issuer and provider at once: its own TokenRequests
    must be exchangeable there. Called by whichever ``init_app`` runs second.

    Only when the issuer's key is one this provider serves (a static key of
    ``TOKENREQ_PROVIDER_KEYS``, or a managed ``tkr_`` key): an issuer signing
    for another service (Ably itself) is not bound by this provider's limits.
    """
    key = read(config, "TOKENREQ_KEY")
    if key is None:
        return
    key_name, _, secret = key.partition(":")
    static = read(config, "TOKENREQ_PROVIDER_KEYS")
    if not secret.startswith("tkr_") and (static is None or static.get(key_name) is None):
        return
    ttl = read(config, "TOKENREQ_TTL")
    max_ttl = read(config, "TOKENREQ_MAX_TTL")
    if ttl > max_ttl:
        raise ConfigError(
            f"TOKENREQ_TTL ({ttl} ms, what the issuer signs) is longer than TOKENREQ_MAX_TTL "
            f"({max_ttl} ms, the longest the provider accepts): this app would refuse its own "
            "TokenRequests (40003); lower TOKENREQ_TTL or raise TOKENREQ_MAX_TTL"
        )


def _from_text(name: str, raw: str) -> Any:
    """An environment value: JSON when it parses (``60000``, ``["a"]``), else the text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def from_env(config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Copy every ``TOKENREQ_*`` environment variable into ``config``.

    A value that parses as JSON is stored parsed (``60000`` becomes an int,
    ``["a"]`` a list); anything else is stored as the string. Settings that
    are text (keys, secrets, URLs) are stored as written.
    """
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if not name.startswith(PREFIX):
            continue
        setting = SETTINGS.get(name)
        config[name] = raw if setting is not None and setting.text else _from_text(name, raw)


def markdown_table(role: str) -> str:
    """The README's configuration table for ``role`` (tested against the README)."""
    lines = ["| setting | default | what it does |", "|---|---|---|"]
    for setting in SETTINGS.values():
        if setting.role == role:
            lines.append(f"| `{setting.name}` | {setting.default_text} | {setting.doc} |")
    return "\n".join(lines)
