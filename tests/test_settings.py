"""The settings registry: one place for every TOKENREQ_* setting, checked at init_app."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flask_tokenreq import settings
from flask_tokenreq.errors import ConfigError
from flask_tokenreq.keys import StaticKeyStore, parse_key
from flask_tokenreq.settings import SETTINGS, markdown_table, read

from .conftest import KEY, ROOT, SECRET

README = (ROOT / "README.md").read_text()


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(SETTINGS):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("role", ["issuer", "provider", "keys"])
def test_readme_configuration_tables_are_the_registry(role: str) -> None:
    match = re.search(
        rf"<!-- settings:{role}[^>]*-->\n(.*?)\n<!-- /settings:{role} -->", README, re.S
    )
    assert match, f"README.md has no <!-- settings:{role} --> table"
    assert match.group(1) == markdown_table(role), (
        "README.md's configuration table differs from flask_tokenreq/settings.py; paste "
        f'the output of: python -c "from flask_tokenreq.settings import markdown_table; '
        f"print(markdown_table('{role}'))\""
    )


def test_every_setting_the_package_names_is_in_the_registry() -> None:
    package = ROOT / "flask_tokenreq"
    named: set[str] = set()
    for path in package.rglob("*.py"):
        named |= set(re.findall(r"TOKENREQ_[A-Z][A-Z_]*[A-Z]", path.read_text()))
    assert named - set(SETTINGS) == set()


def test_defaults_without_configuration() -> None:
    assert read({}, "TOKENREQ_TTL") == 3_600_000
    assert read({}, "TOKENREQ_TIMESTAMP_WINDOW") == 120
    assert read({}, "TOKENREQ_KEY") is None
    first = read({}, "TOKENREQ_CORS_ORIGINS")
    first.append("https://mutated.example")
    assert read({}, "TOKENREQ_CORS_ORIGINS") == []  # defaults are never shared lists


def test_config_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENREQ_TTL", "600000")
    assert read({}, "TOKENREQ_TTL") == 600_000
    assert read({"TOKENREQ_TTL": 120_000}, "TOKENREQ_TTL") == 120_000


def test_environment_text_settings_are_not_json_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    digits = "1" * 40  # valid JSON (a number), but a secret is text
    monkeypatch.setenv("TOKENREQ_SIGNING_SECRET", digits)
    assert read({}, "TOKENREQ_SIGNING_SECRET") == digits
    monkeypatch.setenv("TOKENREQ_CORS_ORIGINS", '["https://app.example"]')
    assert read({}, "TOKENREQ_CORS_ORIGINS") == ["https://app.example"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TOKENREQ_TTL", 3600, "3600 s is 3600000"),
        ("TOKENREQ_DEFAULT_TTL", 60, "60 s is 60000"),
        ("TOKENREQ_MAX_TTL", 7200, "7200 s is 7200000"),
    ],
)
def test_ttl_in_seconds_by_habit_names_the_fix(name: str, value: int, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        read({name: value}, name)
    message = str(info.value)
    assert name in message
    assert "at least 10000 ms" in message
    assert expected in message


def test_the_seconds_hint_only_proposes_an_allowed_value() -> None:
    """Read as seconds, 90000 would be 25 hours: over the maximum, so it was not seconds."""
    config = {"TOKENREQ_MIN_TTL": 100_000, "TOKENREQ_TTL": 90_000}
    with pytest.raises(ConfigError) as info:
        read(config, "TOKENREQ_TTL")
    assert "at least 100000 ms" in str(info.value)
    assert "durations are in milliseconds" not in str(info.value)
    with pytest.raises(ConfigError, match="3600 s is 3600000"):
        read({**config, "TOKENREQ_TTL": 3600}, "TOKENREQ_TTL")


@pytest.mark.parametrize("role", ["issuer", "provider"])
def test_the_role_guides_list_every_setting(role: str) -> None:
    """docs/issuer.md and docs/provider.md have a row for each of the role's settings."""
    guide = (ROOT / "docs" / f"{role}.md").read_text()
    rows = dict(re.findall(r"^\| `(TOKENREQ_[A-Z_]+)` \|(.*)$", guide, re.M))
    assert {s.name for s in SETTINGS.values() if s.role == role} <= set(rows)
    if role == "issuer":  # the floor of TOKENREQ_TTL is TOKENREQ_MIN_TTL, not 1
        assert "TOKENREQ_MIN_TTL" in rows["TOKENREQ_TTL"]


def test_ttl_floor_is_configurable() -> None:
    config = {"TOKENREQ_MIN_TTL": 1000, "TOKENREQ_TTL": 3000}
    assert read(config, "TOKENREQ_TTL") == 3000
    with pytest.raises(ConfigError, match="TOKENREQ_MIN_TTL"):
        read({"TOKENREQ_MIN_TTL": 1000, "TOKENREQ_TTL": 999}, "TOKENREQ_TTL")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("appid.keyid:x", "1-byte secret"),
        ("appid.keyid:" + "x" * 31, "31-byte secret"),
        ("appid.keyid", "':'"),
        ("appidkeyid:" + "x" * 40, "'.'"),
        ("appid.keyid:" + "x" * 30 + " y", "whitespace"),
    ],
)
def test_weak_or_malformed_configured_keys_are_refused(value: str, fragment: str) -> None:
    for name in ("TOKENREQ_KEY", "TOKENREQ_PROVIDER_KEYS"):
        config: dict[str, Any] = {name: value if name == "TOKENREQ_KEY" else [value]}
        with pytest.raises(ConfigError) as info:
            read(config, name)
        message = str(info.value)
        assert name in message
        assert fragment in message
        secret = value.partition(":")[2]
        if secret:
            assert secret not in message


def test_one_key_parser_for_signing_and_configuration() -> None:
    # The structure is parsed by one function; configuration adds its policy
    # (Ably's appId.keyId form, a secret of at least 32 bytes) on top.
    assert parse_key(KEY) == (KEY.partition(":")[0], SECRET)
    assert read({"TOKENREQ_KEY": KEY}, "TOKENREQ_KEY") == KEY
    store = read({"TOKENREQ_PROVIDER_KEYS": [KEY]}, "TOKENREQ_PROVIDER_KEYS")
    assert isinstance(store, StaticKeyStore)
    key = store.get(KEY.partition(":")[0])
    assert key is not None
    assert key.secret == SECRET
    for bad in ("no-colon", ":secret", "name:", "a b:secret"):
        with pytest.raises(ValueError, match="key"):
            parse_key(bad)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("TOKENREQ_CORS_ORIGINS", "https://app.example", "wrap a single value in a list"),
        ("TOKENREQ_SIGNING_SECRET_FALLBACKS", "x" * 40, "wrap a single value in a list"),
        ("TOKENREQ_SIGNING_SECRET_FALLBACKS", ["short"], "at least 32 bytes"),
        ("TOKENREQ_KEY_ENCRYPTION_KEYS", ["not-a-fernet-key"], "Fernet"),
        ("TOKENREQ_KEY_ENCRYPTION_KEYS", [], "at least one"),
        ("TOKENREQ_AUDIT", "perhaps", "true or false"),
        ("TOKENREQ_PROVIDER_URL_PREFIX", "api", "'/'"),
        ("TOKENREQ_TOKEN_ALGORITHM", "RS256", "HS256"),
        ("TOKENREQ_LEEWAY", 1.5, "integer"),
        ("TOKENREQ_PROVIDER_TIMEOUT", 0, "seconds"),
    ],
)
def test_wrong_values_name_the_setting_and_the_fix(name: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        read({name: value}, name)
    assert name in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("0", False), ("true", True)])
def test_booleans_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    """The environment's ``1`` and ``0`` are parsed as JSON (ints): still booleans."""
    monkeypatch.setenv("TOKENREQ_AUDIT", raw)
    assert read({}, "TOKENREQ_AUDIT") is expected
    config: dict[str, Any] = {}
    settings.from_env(config, {"TOKENREQ_AUDIT": raw})
    assert read(config, "TOKENREQ_AUDIT") is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, "2"])
def test_other_numbers_are_not_booleans(value: Any) -> None:
    with pytest.raises(ConfigError, match="TOKENREQ_AUDIT must be true or false"):
        read({"TOKENREQ_AUDIT": value}, "TOKENREQ_AUDIT")


def test_fernet_keys_are_accepted() -> None:
    from cryptography.fernet import Fernet

    keys = [Fernet.generate_key().decode(), Fernet.generate_key().decode()]
    assert read({"TOKENREQ_KEY_ENCRYPTION_KEYS": keys}, "TOKENREQ_KEY_ENCRYPTION_KEYS") == keys


def test_from_env_keeps_text_settings_as_text() -> None:
    config: dict[str, Any] = {}
    settings.from_env(
        config,
        {
            "TOKENREQ_TTL": "600000",
            "TOKENREQ_PROVIDER_KEYS": f'["{KEY}"]',
            "TOKENREQ_SIGNING_SECRET": "1" * 40,
            "TOKENREQ_EXAMPLE_ONLY": "[1, 2]",
            "OTHER": "ignored",
        },
    )
    assert config == {
        "TOKENREQ_TTL": 600_000,
        "TOKENREQ_PROVIDER_KEYS": [KEY],
        "TOKENREQ_SIGNING_SECRET": "1" * 40,
        "TOKENREQ_EXAMPLE_ONLY": [1, 2],
    }


def test_registry_entries_are_documented() -> None:
    for setting in SETTINGS.values():
        assert setting.name.startswith("TOKENREQ_")
        assert setting.doc
        assert "|" not in setting.doc
        assert setting.role in {"issuer", "provider", "keys", "admin"}
    assert Path(settings.__file__).name == "settings.py"


def test_the_old_config_module_still_works_with_a_deprecation_warning() -> None:
    """``flask_tokenreq.config`` (deprecated for one release) warns once, on import."""
    code = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from flask_tokenreq import config
from flask_tokenreq import settings
assert config.from_env is settings.from_env
assert config.get_int({"TOKENREQ_X": "7"}, "TOKENREQ_X", 1, minimum=1) == 7
print([str(w.message) for w in caught if w.category is DeprecationWarning])
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "use flask_tokenreq.settings" in done.stdout
