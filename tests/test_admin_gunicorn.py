"""A key-page ticket opens one session, whatever the number of gunicorn workers.

``tests.cli_app`` (the example provider with a ``KeyAdmin``) runs under
gunicorn with 4 sync workers on a real SQLite key database and a shared
nonce store (a SQLite file, or Redis). This process issues tickets as the
app would (same ``SECRET_KEY``), then sends one ticket to the exchange 16
times at once: exactly one answer opens a session, every other is 401
"ticket already used". The session is a signed cookie, so every worker
honours it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from tests import cli_app
from tests.dbs import FERNET_1
from tests.servers import fire, run_gunicorn

WORKERS = 4
COPIES = 16
PREFIX = "/tokenreq/admin"

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def nonce_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return f"sqlite:///{tmp_path / 'nonces.sqlite3'}"


@pytest.fixture
def served(nonce_store: str, tmp_path: Path) -> Iterator[tuple[str, Flask]]:
    """The gunicorn server's URL, and the same app in this process (to issue tickets)."""
    env = {
        "TOKENREQ_KEY_ENCRYPTION_KEYS": json.dumps([FERNET_1]),
        "TOKENREQ_DATABASE_URL": f"sqlite:///{tmp_path / 'keys.sqlite3'}",
        "TOKENREQ_NONCE_STORE": nonce_store,
        "TOKENREQ_SIGNING_SECRET": "admin-gunicorn-signing-secret-0123456789abcdef",
        "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp_path / 'messages.sqlite3'}",
        "FLASK_SECRET_KEY": "admin-gunicorn-session-key-0123456789abcdef0123",
    }
    config = {name: json.loads(v) if v.startswith("[") else v for name, v in env.items()}
    config["SECRET_KEY"] = env["FLASK_SECRET_KEY"]
    app = cli_app.create_app(config, instance_path=str(tmp_path))
    with run_gunicorn(
        "tests.cli_app:create_app()", env, workers=WORKERS, ready_path="/time"
    ) as server:
        yield server.url, app


def test_one_ticket_opens_one_session_across_workers(served: tuple[str, Flask]) -> None:
    url, app = served
    for _ in range(3):  # three rounds: not a lucky interleaving
        with app.app_context():
            ticket = app.extensions["tokenreq_admin"].issue_ticket("alice")
        answers = fire("GET", f"{url}{PREFIX}/session/ticket/exchange?ticket={ticket}", COPIES)
        opened = [a for a in answers if a.status_code == 200]
        assert len(opened) == 1, [(a.status_code, a.text) for a in answers]
        refused = [a.json()["error"]["message"] for a in answers if a.status_code != 200]
        assert len(refused) == COPIES - 1
        assert all(m.startswith("ticket already used") for m in refused), refused
        # The session works on every worker (a signed cookie; no server-side state).
        cookies = opened[0].cookies
        for _ in range(2 * WORKERS):
            listed = requests.get(f"{url}{PREFIX}/api/keys", cookies=cookies, timeout=30)
            assert listed.status_code == 200, listed.text
