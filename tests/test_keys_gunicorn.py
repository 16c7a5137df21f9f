"""Revocation is seen by all 4 gunicorn workers on their next request, under traffic.

``tests.keys_app`` runs under gunicorn with 4 sync workers, managed keys on a
real SQLite file or PostgreSQL. The test process changes keys through its
own :class:`~flask_tokenreq.keys.sql.SqlKeyStore` (another host on the same
database) or through ``POST /keys/<keyName>/revokeTokens``, while threads
keep sending requests. Every request that starts after the change returned
must be refused, whichever worker answers; every worker must have answered
at least once before (its cache is warm) and once after.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from flask_tokenreq import sign_token_request
from flask_tokenreq.keys.sql import SqlKeyStore
from tests.dbs import FERNET_1, module_db_url
from tests.servers import run_gunicorn

__all__ = ["module_db_url"]  # a fixture used by name

WORKERS = 4
THREADS = 8
SIGNING_SECRET = "gunicorn-keys-signing-secret-0123456789abcdef"
#: Most requests a phase may send while waiting for every worker to answer.
MAX_REQUESTS = 4000

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@dataclass
class Server:
    url: str
    store: SqlKeyStore
    #: The server's log so far (gunicorn's and the app's, stderr).
    log: Callable[[], str]

    def token(self, key: str, **params: object) -> str:
        treq = sign_token_request(key, **params)  # type: ignore[arg-type]
        response = requests.post(
            f"{self.url}/keys/{treq.key_name}/requestToken", json=treq.to_dict(), timeout=30
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


@dataclass(frozen=True)
class Answer:
    started: float
    status: int
    code: str
    pid: int


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + base64.b64encode(token.encode()).decode()}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}


def ask(url: str, headers: dict[str, str]) -> Answer:
    started = time.monotonic()
    response = requests.get(url, headers=headers, timeout=30)
    return Answer(
        started,
        response.status_code,
        response.headers.get("X-Ably-ErrorCode", ""),
        int(response.headers["X-Worker-Pid"]),
    )


class Traffic:
    """Threads sending one request after another until stopped; every answer is kept."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.more = threading.Condition(self.lock)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]

    def _run(self) -> None:
        while not self.stop.is_set():
            answer = ask(self.url, self.headers)
            with self.more:
                self.answers.append(answer)
                self.more.notify_all()

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def wait_for(self, done: Callable[[list[Answer]], bool]) -> list[Answer]:
        """Wait (bounded by :data:`MAX_REQUESTS` answers) until ``done(answers)``."""
        with self.more:
            while not done(self.answers):
                assert len(self.answers) < MAX_REQUESTS, "not every worker answered"
                self.more.wait(timeout=30)
            return list(self.answers)


def every_worker(answers: list[Answer]) -> bool:
    return len({a.pid for a in answers}) >= WORKERS


def check_change_bites(
    server: Server, headers: dict[str, str], path: str, change: Callable[[], None], code: str
) -> None:
    """Under traffic: ``change()``; afterwards, every worker refuses with ``code``, none accepts."""
    with Traffic(server.url + path, headers) as traffic:
        before = traffic.wait_for(
            lambda answers: every_worker([a for a in answers if a.status == 200])
        )
        assert all(a.status == 200 for a in before), before[:5]
        change()
        returned = time.monotonic()

        def after_on_every_worker(answers: list[Answer]) -> bool:
            return every_worker([a for a in answers if a.started > returned])

        answers = traffic.wait_for(after_on_every_worker)
    after = [a for a in answers if a.started > returned]
    accepted = [a for a in after if a.status == 200]
    assert accepted == [], f"{len(accepted)} of {len(after)} accepted after the change returned"
    assert {(a.status, a.code) for a in after} == {(401, code)}
    assert len({a.pid for a in after}) == WORKERS


@pytest.fixture(scope="module")
def server(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("gunicorn-keys")
    database = module_db_url
    env = {
        "TOKENREQ_KEY_ENCRYPTION_KEYS": json.dumps([FERNET_1]),
        "TOKENREQ_DATABASE_URL": database,
        "TOKENREQ_NONCE_STORE": f"sqlite:///{tmp / 'nonces.sqlite3'}",
        "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
    }
    store = SqlKeyStore(database, [FERNET_1])
    store.create_tables()
    with run_gunicorn(
        "tests.keys_app:create_app()", env, workers=WORKERS, ready_path="/time"
    ) as running:
        yield Server(running.url, store, running.log_text)
    store.close()


def test_a_revoked_key_is_refused_by_every_worker_at_once(server: Server) -> None:
    key, full = server.store.create("revoke me")
    token = server.token(full, client_id="alice")
    check_change_bites(
        server,
        bearer(token),
        "/rooms/lobby",
        lambda: server.store.revoke(key.key_name, "leaked"),
        "40141",
    )
    treq = sign_token_request(full)
    response = requests.post(f"{server.url}/keys/{key.key_name}/requestToken", json=treq.to_dict())
    assert response.headers["X-Ably-ErrorCode"] == "40131"


def test_revoke_tokens_over_http_is_seen_by_every_worker_at_once(server: Server) -> None:
    key, full = server.store.create("revoke tokens")
    alice = server.token(full, client_id="alice")
    bob = server.token(full, client_id="bob")

    def revoke() -> None:
        response = requests.post(
            f"{server.url}/keys/{key.key_name}/revokeTokens",
            json={"targets": ["clientId:alice"]},
            headers=basic(full),
            timeout=30,
        )
        assert response.json()["successCount"] == 1

    check_change_bites(server, bearer(alice), "/rooms/lobby", revoke, "40141")
    assert ask(f"{server.url}/rooms/lobby", bearer(bob)).status == 200
    fresh = server.token(full, client_id="alice")
    assert ask(f"{server.url}/rooms/lobby", bearer(fresh)).status == 200


def test_a_rotated_secret_is_refused_by_every_worker_at_once(server: Server) -> None:
    key, old = server.store.create("rotate me")
    check_change_bites(
        server, basic(old), "/rooms/lobby", lambda: server.store.rotate(key.key_name), "40101"
    )


def test_tokens_are_not_refused_before_the_change(server: Server) -> None:
    """The control: the same traffic with no change is accepted throughout."""
    _, full = server.store.create("steady")
    token = server.token(full)
    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(
            pool.map(lambda _: ask(f"{server.url}/rooms/lobby", bearer(token)), range(64))
        )
    assert {a.status for a in answers} == {200}


def test_no_secret_or_token_in_the_server_log(server: Server) -> None:
    """Runs last in the module: everything above logged what it logs by now."""
    key, full = server.store.create("log check")
    token = server.token(full, client_id="alice")
    ask(
        f"{server.url}/rooms/lobby", basic(full[:-1] + ("x" if full[-1] != "x" else "y"))
    )  # a mistyped key
    requests.post(
        f"{server.url}/keys/{key.key_name}/revokeTokens",
        json={"targets": ["clientId:alice"]},
        headers=basic(full),
        timeout=30,
    )
    ask(f"{server.url}/rooms/lobby", bearer(token))
    log = server.log()
    assert "tkr_" not in log
    assert token not in log
    assert SIGNING_SECRET not in log
