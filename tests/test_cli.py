"""``flask tokenreq ...`` through a real ``flask`` subprocess, as a user runs it.

The app is ``examples.provider_app:create_app()`` configured only through
environment variables, with managed keys on a real SQLite file (and, for the
main flow, PostgreSQL). What a command changed is checked through a provider
app built in this process on the same database: the keys the CLI prints
exchange, rotated secrets are refused, revoked keys get 40131, revoked tokens
40141. Every mistake must be one line on stderr, exit status 1, and change
nothing. No output may hold a secret, except the full key that ``keys
create`` and ``keys rotate`` print once.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask

from examples import provider_app
from flask_tokenreq import models, sign_token_request
from flask_tokenreq.client import bearer
from flask_tokenreq.keys import parse_key
from flask_tokenreq.keys.secret import check_secret_format, hint
from tests import cli_app
from tests.conftest import KEY, KEY_NAME, ROOT, SECRET
from tests.dbs import FERNET_1, FERNET_2, db_url, pg_schema

__all__ = ["db_url", "pg_schema"]  # fixtures used by name

FLASK = str(Path(sys.executable).with_name("flask"))
APP = "examples.provider_app:create_app()"
SIGNING_SECRET = "cli-test-signing-secret-0123456789abcdef0123"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@dataclass
class Cli:
    """Runs ``flask tokenreq ...`` against one database; remembers every output."""

    env: dict[str, str]
    tmp: Path
    outputs: list[str] = field(default_factory=list)

    def __call__(self, *args: str, app: str = APP, **env: str) -> Run:
        done = subprocess.run(
            [FLASK, "--app", app, "tokenreq", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.outputs += [done.stdout, done.stderr]
        return Run(done.returncode, done.stdout, done.stderr)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """The same settings, for a provider app in this process."""
        config: dict[str, Any] = {
            name: json.loads(value) if value.startswith("[") else value
            for name, value in self.env.items()
            if name.startswith("TOKENREQ_")
        }
        config["SECRET_KEY"] = self.env["FLASK_SECRET_KEY"]
        config["TOKENREQ_NONCE_STORE"] = f"sqlite:///{self.tmp / 'nonces-here.sqlite3'}"
        return {**config, **overrides}

    def provider(self, **overrides: Any) -> Flask:
        return provider_app.create_app(self.config(**overrides), instance_path=str(self.tmp))


def base_env(tmp: Path, database: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENREQ_", "FLASK_"))}
    env.update(
        {
            "TOKENREQ_KEY_ENCRYPTION_KEYS": json.dumps([FERNET_1]),
            "TOKENREQ_DATABASE_URL": database,
            "TOKENREQ_NONCE_STORE": f"sqlite:///{tmp / 'nonces.sqlite3'}",
            "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
            "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp / 'messages.sqlite3'}",
            "FLASK_SECRET_KEY": "cli-test-session-key-0123456789abcdef0123",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


@pytest.fixture
def any_db(db_url: str, tmp_path: Path) -> Cli:
    """The CLI on a SQLite file, then on PostgreSQL (the main flows)."""
    return Cli(base_env(tmp_path, db_url), tmp_path)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The CLI on a SQLite file."""
    return Cli(base_env(tmp_path, f"sqlite:///{tmp_path / 'keys.sqlite3'}"), tmp_path)


def exchange(app: Flask, key: str, **params: Any) -> Any:
    treq = sign_token_request(key, **params)
    return app.test_client().post(f"/keys/{treq.key_name}/requestToken", json=treq.to_dict())


def code_of(response: Any) -> int:
    return 200 if response.status_code == 200 else int(response.headers["X-Ably-ErrorCode"])


# -- the flow a user follows -------------------------------------------------------------


def test_create_list_get_and_audit(any_db: Cli) -> None:
    cli = any_db
    created = cli("keys", "create", "--name", "CI Key", "--json")
    assert created.err == ""
    document = created.json()
    key_name, secret = parse_key(document["key"])
    assert document["keyName"] == key_name
    assert document["name"] == "CI Key"
    assert check_secret_format(secret)
    assert code_of(exchange(cli.provider(), document["key"])) == 200

    listed = cli("keys", "list", "--json").json()
    assert [(k["keyName"], k["status"], k["source"]) for k in listed] == [
        (key_name, "active", "database")
    ]
    assert listed[0]["display"] == f"{key_name}:{hint(secret)}"
    got = cli("keys", "get", key_name, "--json").json()
    assert got == listed[0]
    human = cli("keys", "list")
    assert key_name in human.out
    assert "CI Key" in human.out

    events = cli("audit", "--json").json()  # newest first
    assert [e["event"] for e in events] == ["token.issued", "key.created"]
    for name in ("event", "at", "key_name", "client_id", "code"):
        assert name in events[1]
    assert events[1]["key_name"] == key_name
    assert events[1]["actor"].startswith("cli")
    assert cli("audit", "--event", "key.revoked", "--json").json() == []
    recent = cli("audit", "--since", "1h", "--key", key_name, "--event", "key.created", "--json")
    assert [e["event"] for e in recent.json()] == ["key.created"]

    # The full key was printed once, by create; nothing else shows the secret.
    assert [i for i, text in enumerate(cli.outputs) if secret in text] == [0]


def test_the_readme_command_from_the_repository_root(tmp_path: Path) -> None:
    env = base_env(tmp_path, f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    command = 'flask --app "examples.provider_app:create_app()" tokenreq keys create'
    done = subprocess.run(
        [FLASK, *shlex.split(command)[1:], "--name", "CI Key", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) >= {"keyName", "key"}


def test_rotate_revoke_and_revoke_tokens(any_db: Cli) -> None:
    cli = any_db
    first = cli("keys", "create", "--name", "k", "--capability", '{"chat:*":["*"]}', "--json")
    old = first.json()["key"]
    key_name = first.json()["keyName"]
    app = cli.provider()
    response = exchange(app, old, client_id="alice")
    alice = response.get_json()["token"]
    bob = exchange(app, old, client_id="bob").get_json()["token"]

    rotated = cli("keys", "rotate", key_name, "--json").json()
    assert rotated["keyName"] == key_name
    assert rotated["grace"] == 0
    new = rotated["key"]
    assert new != old
    assert code_of(exchange(app, old)) == 40101  # Wacht: the old secret is rejected
    assert code_of(exchange(app, new)) == 200

    revoked = cli("tokens", "revoke", key_name, "--client-id", "alice", "--json").json()
    assert revoked["successCount"] == 1
    assert revoked["results"][0]["target"] == "clientId:alice"
    client = app.test_client()
    history = "/channels/chat:x/messages"
    assert code_of(client.get(history, headers={"Authorization": bearer(alice)})) == 40141
    assert code_of(client.get(history, headers={"Authorization": bearer(bob)})) == 200

    out = cli("keys", "revoke", key_name, "--reason", "leaked", "--json").json()
    assert out["status"] == "revoked"
    assert out["revokedReason"] == "leaked"
    assert code_of(exchange(app, new)) == 40131
    assert code_of(client.get(history, headers={"Authorization": bearer(bob)})) == 40141
    events = [e["event"] for e in cli("audit", "--json").json() if e["event"][:4] != "toke"]
    assert events == ["key.revoked", "key.rotated", "key.created"]
    assert cli("audit", "--event", "tokens.revoked", "--json").json()[0]["detail"]["targets"] == [
        "clientId:alice"
    ]
    for text in cli.outputs[2:]:  # after the create; the rotate's output is the new key
        assert parse_key(old)[1] not in text
    app.extensions["tokenreq_provider"].close()


def test_grace_and_expiry_are_durations(cli: Cli) -> None:
    document = cli("keys", "create", "--name", "k", "--expires", "30d", "--json").json()
    # 30 days from when the command read the clock, just before the key was created.
    assert 29 * 86_400_000 < document["expires"] - document["created"] <= 30 * 86_400_000
    rotated = cli("keys", "rotate", document["keyName"], "--grace", "1h", "--json").json()
    assert rotated["grace"] == 3_600_000
    app = cli.provider()
    assert code_of(exchange(app, document["key"])) == 200  # in its grace period
    assert code_of(exchange(app, rotated["key"])) == 200
    app.extensions["tokenreq_provider"].close()


# -- mistakes: one line on stderr, exit status 1, nothing changed ------------------------


def snapshot(cli: Cli) -> Any:
    engine = sa.create_engine(cli.env["TOKENREQ_DATABASE_URL"])
    with engine.connect() as conn:
        state = {
            table.name: sorted(map(str, conn.execute(sa.select(table)).all()))
            for table in (models.keys, models.key_secrets, models.token_revocations, models.audit)
        }
    engine.dispose()
    return state


def test_every_mistake_is_one_line_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.env["TOKENREQ_PROVIDER_KEYS"] = json.dumps([KEY])
    key_name = cli("keys", "create", "--name", "k", "--json").json()["keyName"]
    before = snapshot(cli)
    mistakes: list[tuple[list[str], str]] = [
        (["keys", "rotate", "tokenreq.unknown0"], "No managed key"),
        (["keys", "get", "tokenreq.unknown0"], "no key named"),
        (["keys", "create", "--name", "x", "--expires", "3x"], "--expires must be a duration"),
        (["keys", "create", "--name", "x", "--capability", "{not json"], "--capability must be"),
        (["keys", "create", "--name", "x", "--capability", '{"a": "b"}'], "apability"),
        (["keys", "create", "--capability", "{}"], "Missing option '--name'"),
        (["keys", "rotate", key_name, "--grace", "1y"], "--grace must be a duration"),
        (["keys", "revoke", KEY_NAME, "--reason", "r"], "comes from configuration"),
        (["keys", "rotate", KEY_NAME], "comes from configuration"),
        (["tokens", "revoke", KEY_NAME, "--client-id", "a"], "comes from configuration"),
        (["keys", "revoke", key_name], "Missing option '--reason'"),
        (["tokens", "revoke", key_name], "--client-id"),
        (["tokens", "revoke", key_name, "--client-id", "x" * 2000], "at most 1024"),
        (["audit", "--since", "yesterday"], "--since must be a duration"),
        (["keys", "frobnicate"], "No such command"),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:  # independent processes, read-only
        runs = list(pool.map(lambda m: cli(*m[0], "--json"), mistakes))
    for (args, expected), run in zip(mistakes, runs, strict=True):
        assert run.code == 1, (args, run)
        assert run.out == "", (args, run)
        lines = run.err.splitlines()
        assert len(lines) == 1, (args, run.err)
        assert lines[0].startswith("Error: ")
        assert expected in lines[0], (args, lines[0])
        assert "Traceback" not in run.err
    assert snapshot(cli) == before
    assert SECRET not in "".join(cli.outputs)


def test_managed_keys_off_is_a_clear_mistake(tmp_path: Path) -> None:
    env = base_env(tmp_path, f"sqlite:///{tmp_path / 'k.sqlite3'}")
    del env["TOKENREQ_KEY_ENCRYPTION_KEYS"]
    del env["TOKENREQ_DATABASE_URL"]
    env["TOKENREQ_PROVIDER_KEYS"] = json.dumps([KEY])
    cli = Cli(env, tmp_path)
    run = cli("keys", "create", "--name", "x")
    assert run.code == 1
    assert run.err.strip() == (
        "Error: Managed keys are off: set TOKENREQ_KEY_ENCRYPTION_KEYS to create, rotate "
        "and revoke keys"
    )
    listed = cli("keys", "list", "--json").json()
    assert listed == [
        {
            "keyName": KEY_NAME,
            "name": None,
            "display": f"{KEY_NAME}:…",
            "capability": {"[*]*": ["*"]},
            "status": "active",
            "created": None,
            "expires": None,
            "revoked": None,
            "revokedReason": None,
            "lastUsed": None,
            "source": "config",
        }
    ]
    assert "no audit log" in cli("audit").err


# -- text output: what clients chose reaches no terminal raw -----------------------------


#: Any control character (C0, DEL, C1) but the newline that ends each line.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def test_text_output_escapes_control_characters(cli: Cli) -> None:
    """A refused exchange's key name (the URL) and clientId (the body) are a client's choice:
    the text output shows their escape sequences, a terminal never gets them."""
    key_name = cli("keys", "create", "--name", "CI Key", "--json").json()["keyName"]
    app = cli.provider()
    client_id = "\x1b[2J\x1b[1;31mFAKE: all keys revoked\x1b[0m\x9b"
    body = {"keyName": "app.k\x1b[8m", "timestamp": 0, "nonce": "n" * 20, "mac": "x" * 44}
    refused = app.test_client().post(
        "/keys/app.k%1B%5B8m/requestToken", json={**body, "clientId": client_id}
    )
    assert refused.status_code == 401
    with app.app_context():
        assert app.extensions["tokenreq_provider"].audit.flush()
    app.extensions["tokenreq_provider"].close()
    reason = "leaked\x1b[8m\r\n\tforged line"
    assert cli("keys", "revoke", key_name, "--reason", reason).code == 0

    audit, got = cli("audit"), cli("keys", "get", key_name)
    for run in (audit, got):
        assert run.code == 0, run.err
        assert not CONTROL.search(run.out), run.out
    [line] = [line for line in audit.out.splitlines() if "token.refused" in line]
    assert "app.k\\x1b[8m" in line
    assert "\\x1b[2J\\x1b[1;31mFAKE: all keys revoked\\x1b[0m\\x9b" in line
    assert "revokedReason: leaked\\x1b[8m\\x0d\\x0a\\x09forged line" in got.out.splitlines()
    # --json shows the values themselves, JSON-escaped.
    events = cli("audit", "--event", "token.refused", "--json").json()
    assert [(e["key_name"], e["client_id"]) for e in events] == [("app.k\x1b[8m", client_id)]
    # A mistake's one line on stderr quotes what was typed, escaped too.
    unknown = cli("keys", "get", "app.k\x1b[2J")
    assert unknown.code == 1
    assert "\\x1b[2J" in unknown.err
    assert not CONTROL.search(unknown.err), unknown.err


def test_the_latest_time_a_key_may_have_is_shown_and_a_later_one_is_milliseconds(
    cli: Cli,
) -> None:
    """``expires`` is at most the last ms of the year 9999, which the CLI shows as a
    date; a later one (a row from before that bound) is shown as milliseconds."""
    from flask_tokenreq.cli import _time
    from flask_tokenreq.keys.base import MAX_EXPIRES_MS

    cli.env["TOKENREQ_PROVIDER_KEYS"] = json.dumps([{"key": KEY, "expires": MAX_EXPIRES_MS}])
    listed, got = cli("keys", "list"), cli("keys", "get", KEY_NAME)
    for run in (listed, got):
        assert run.code == 0, run.err
        assert "Traceback" not in run.err
    assert "9999-12-31T23:59:59Z" in listed.out
    assert "expires: 9999-12-31T23:59:59Z" in got.out.splitlines()
    assert cli("keys", "get", KEY_NAME, "--json").json()["expires"] == MAX_EXPIRES_MS
    assert _time(10**15) == f"{10**15} ms"
    assert _time(-(10**15)) == f"{-(10**15)} ms"


# -- encryption-key rotation, tables, retention, nonces ----------------------------------


def test_reencrypt_moves_secrets_to_the_newest_encryption_key(any_db: Cli) -> None:
    cli = any_db
    full = cli("keys", "create", "--name", "k", "--json").json()["key"]
    both = json.dumps([FERNET_2, FERNET_1])  # the new key first, the old one still known
    assert cli("keys", "reencrypt", "--json", TOKENREQ_KEY_ENCRYPTION_KEYS=both).json() == {
        "reencrypted": 1
    }
    only_new = json.dumps([FERNET_2])
    assert len(cli("keys", "list", "--json", TOKENREQ_KEY_ENCRYPTION_KEYS=only_new).json()) == 1
    app = cli.provider(TOKENREQ_KEY_ENCRYPTION_KEYS=[FERNET_2])
    assert code_of(exchange(app, full)) == 200
    app.extensions["tokenreq_provider"].close()
    # A host still configured with the old key alone refuses to start.
    stale = cli("keys", "list", TOKENREQ_KEY_ENCRYPTION_KEYS=json.dumps([FERNET_1]))
    assert stale.code == 1
    assert len(stale.err.splitlines()) == 1
    assert "TOKENREQ_KEY_ENCRYPTION_KEYS" in stale.err
    assert FERNET_1 not in stale.err
    assert FERNET_2 not in stale.err
    reencrypted = cli(
        "audit", "--event", "key.reencrypted", "--json", TOKENREQ_KEY_ENCRYPTION_KEYS=both
    )
    assert [e["detail"] for e in reencrypted.json()] == [{"secrets": 1}]


def test_db_init(cli: Cli) -> None:
    document = cli("db", "init", "--json").json()
    assert set(document["tables"]) == {t.name for t in models.metadata.sorted_tables}
    assert document["schemaVersion"] == models.SCHEMA_VERSION
    assert "tokenreq_keys" in cli("db", "init").out


def test_audit_purge_keeps_the_retention(cli: Cli) -> None:
    cli("keys", "create", "--name", "k")
    engine = sa.create_engine(cli.env["TOKENREQ_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(models.audit.insert().values(at=1_000, event="token.issued"))
    engine.dispose()
    assert cli("audit", "--purge", "--json", TOKENREQ_AUDIT_RETENTION="30").json() == {
        "purged": 1,
        "retentionDays": 30,
    }
    assert [e["event"] for e in cli("audit", "--json").json()] == ["key.created"]


def test_nonces_purge(cli: Cli) -> None:
    from flask_tokenreq.stores import open_nonce_store

    # Three claims that expired long ago (a store on a clock at the epoch made them).
    store = open_nonce_store(cli.env["TOKENREQ_NONCE_STORE"], now_ms=lambda: 0)
    for n in range(3):
        assert store.claim("app.key", f"expired-nonce-{n:04d}", 1000)
    store.close()
    assert cli("nonces", "purge", "--json").json() == {"purged": 3}
    assert cli("nonces", "purge").out.strip() == "Purged 0 expired nonce claim(s)."


# -- the key page's ticket ---------------------------------------------------------------


def test_ticket_without_a_key_admin_is_a_clear_mistake(cli: Cli) -> None:
    run = cli("ticket", "--actor", "alice")
    assert run.code == 1
    assert run.out == ""
    assert run.err.startswith("Error: no KeyAdmin is registered on this app")
    assert len(run.err.splitlines()) == 1


def test_ticket_prints_the_key_page_url_whose_ticket_opens_one_session(cli: Cli) -> None:
    app_name = "tests.cli_app:create_app()"
    run = cli("ticket", "--actor", "alice", "--json", app=app_name)
    document = run.json()
    assert document["actor"] == "alice"
    assert document["scopes"] == ["keys:read", "keys:write"]
    url = urlsplit(document["url"])
    assert (url.scheme, url.netloc, url.path) == ("http", "localhost", "/tokenreq/admin/")
    [ticket] = parse_qs(url.query)["ticket"]
    # The same app in this process, on the same database and nonce store (another worker).
    app = cli_app.create_app(
        cli.config(TOKENREQ_NONCE_STORE=cli.env["TOKENREQ_NONCE_STORE"]), instance_path=str(cli.tmp)
    )
    client = app.test_client()
    assert client.get(document["url"]).status_code == 200  # the page itself
    exchange_url = f"{url.path}session/ticket/exchange?{url.query}"
    opened = client.get(exchange_url)
    assert opened.status_code == 200, opened.get_data(as_text=True)
    assert opened.get_json()["actor"] == "alice"
    assert opened.get_json()["scopes"] == ["keys:read", "keys:write"]
    assert client.get("/tokenreq/admin/api/keys").status_code == 200
    again = app.test_client().get(exchange_url)
    assert again.status_code == 401
    assert again.get_json()["error"]["message"].startswith("ticket already used")
    with app.app_context():
        assert app.extensions["tokenreq_provider"].audit.flush()  # the refusal was queued
    events = cli("audit", "--json").json()
    assert [(e["event"], e["actor"]) for e in events] == [
        ("ticket.refused", "admin:alice"),
        ("ticket.exchanged", "admin:alice"),
        ("ticket.issued", "admin:alice"),
    ]
    assert ticket not in json.dumps(events)

    scoped = cli("ticket", "--actor", "bob", "--scope", "keys:read", app=app_name)
    [read_only] = parse_qs(urlsplit(scoped.out.strip()).query)["ticket"]
    opened = app.test_client().get(f"/tokenreq/admin/session/ticket/exchange?ticket={read_only}")
    assert opened.get_json()["scopes"] == ["keys:read"]
    bad = cli("ticket", "--actor", "bob", "--scope", "keys:all", app=app_name)
    assert bad.code == 1
    assert len(bad.err.splitlines()) == 1
    empty = cli("ticket", "--actor", "", app=app_name)
    assert empty.code == 1
    assert empty.err.startswith("Error: a ticket needs an actor")
    assert len(empty.err.splitlines()) == 1
