#!/usr/bin/env python3
"""Managed keys in `make bench`: two ratios, each measured in one run, paired and interleaved.

- ``guarded_managed_vs_unguarded``: a route guarded by ``provider.require()``
  with a token of a **managed** key on SQLite (the key's state and its token
  revocations are checked on every request: one read of the shared-memory
  change counter, a database read after any change; the key's revocation
  list is not empty) against the same handler
  unguarded, on one gunicorn server.
- ``exchange_audit_vs_no_audit``: ``POST /keys/<keyName>/requestToken`` with a
  managed key on SQLite and the audit log on (``token.issued`` rows, batched)
  against the same exchange with ``TOKENREQ_AUDIT=false``: two servers that
  differ only in that setting, measured in alternating order (AB BA ...).
- ``exchange_http_sqlite_managed_audit_vs_floor`` (informational): the
  exchange of a managed key with the audit log on, over the floor of
  ``exchange_http_sqlite_vs_floor`` measured the same way (the signed-in
  ``/empty`` route, or plain durable claims on the server's nonce file), on
  a third server that also has flask-login.

Each ratio is the median of per-round ratios (req/s of the route over req/s of
its baseline, measured one after the other). ``bench/run.py`` calls
:func:`bench_keys`; run this file alone for a quick look::

    .venv/bin/python bench/keys_bench.py --quick

It reuses ``bench/run.py``'s gunicorn launcher, wrk runner and pair summary.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (bench/run.py: gunicorn, wrk, pairs)

from flask_tokenreq import sign_token_request  # noqa: E402

#: The ratios this file measures and their targets (issue 10).
TARGETS: dict[str, float] = {
    "guarded_managed_vs_unguarded": 0.85,
    "exchange_audit_vs_no_audit": 0.90,
}

#: What the managed key may do (as bench/apps.py's static key).
KEY_CAPABILITY = {"*": ["history", "presence", "publish", "subscribe"]}
CLIENT_ID = run.CLIENT_ID
USER_AGENT = run.USER_AGENT


def create_app() -> Any:
    """The app under gunicorn (``keys_bench:create_app()``), configured by ``TOKENREQ_*``.

    The provider at the root, ``/channels/<name>/unguarded`` and
    ``/channels/<name>/guarded``: one handler, the second wrapped in
    ``provider.require("subscribe", "{name}")``; with ``BENCH_SESSION_ROUTES``
    set, also flask-login, ``POST /login`` and the baseline ``GET /empty`` of the
    static-key floor ratios (bench/apps.py's ``add_channel_routes`` and
    ``add_session_routes``).
    """
    from apps import add_channel_routes, add_session_routes
    from flask import Flask

    from flask_tokenreq import TokenProvider, settings

    app = Flask(__name__, instance_path=os.environ.get("BENCH_INSTANCE_PATH") or None)
    settings.from_env(app.config)
    if os.environ.get("BENCH_SESSION_ROUTES"):
        add_session_routes(app)
    add_channel_routes(app, TokenProvider(app))
    return app


class Server(run.Gunicorn):
    """``create_app()`` above under gunicorn, with run.py's worker settings."""

    def __init__(self, instance: Path, env: dict[str, str]) -> None:
        self.port = run.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENREQ_")}
        full_env.update(env, BENCH_INSTANCE_PATH=str(instance))
        cmd = [
            str(Path(sys.executable).with_name("gunicorn")),
            *("--bind", f"127.0.0.1:{self.port}", *self.worker_args()),
            *("--pythonpath", str(BENCH), "--log-level", "warning", "--graceful-timeout", "3"),
            "keys_bench:create_app()",
        ]
        self.config = " ".join(cmd[1:])
        self.proc = subprocess.Popen(cmd, env=full_env, cwd=str(run.ROOT))


def app_settings(folder: Path, encryption_key: str, *, audit: bool = True) -> dict[str, str]:
    """What :func:`create_app` reads (as environment variables): managed keys
    and nonces in SQLite files of ``folder``, the audit log on or off."""
    return {
        "TOKENREQ_KEY_ENCRYPTION_KEYS": json.dumps([encryption_key]),
        "TOKENREQ_DATABASE_URL": f"sqlite:///{folder / 'keys.sqlite3'}",
        "TOKENREQ_NONCE_STORE": f"sqlite:///{folder / 'nonces.sqlite3'}",
        "TOKENREQ_SIGNING_SECRET": "bench-keys-signing-secret-0123456789abcdef0123",
        "TOKENREQ_AUDIT": "true" if audit else "false",
    }


def managed_key(database: str, encryption_key: str) -> str:
    """A fresh managed key in ``database``, with one token revocation of another client."""
    from flask_tokenreq.keys.sql import SqlKeyStore

    store = SqlKeyStore(database, [encryption_key])
    try:
        store.create_tables()
        _, full = store.create("bench", KEY_CAPABILITY)
        store.revoke_tokens(full.partition(":")[0], ["clientId:someone-else"])
    finally:
        store.close()
    return full


def sign_pool(key: str, count: int, path: Path) -> None:
    """``count`` fresh TokenRequests of ``key``, one JSON body per line."""
    with path.open("w") as f:
        for _ in range(count):
            tr = sign_token_request(key, capability=run.CAPABILITY, client_id=CLIENT_ID)
            f.write(tr.to_json())
            f.write("\n")


def measure(
    server: Server,
    wrk: str,
    path: str,
    seconds: float,
    tmp: Path,
    *,
    headers: dict[str, str],
    key: str | None = None,
    rate_guess: float = 3000.0,
    connections: int = 8,
) -> dict[str, Any]:
    """One wrk run; with ``key``, an exchange run on a pool of fresh TokenRequests."""
    kwargs: dict[str, Any] = {"script": run.WRK_DIR / "report.lua"}
    if key is not None:
        pool = tmp / "keys-bodies.jsonl"
        sign_pool(key, int(max(5000, rate_guess * seconds * 2 + 2000)), pool)
        kwargs = {"script": run.WRK_DIR / "exchange.lua", "script_args": [str(pool), path, "1"]}
    cpu_before = run.worker_cpu_ticks(server)
    r = run.run_wrk(
        wrk, server.base + path, seconds, headers=headers, connections=connections, **kwargs
    )
    cpu = (run.worker_cpu_ticks(server) - cpu_before) / run.CLOCK_TICKS
    r["worker_cpu_us_per_request"] = cpu * 1e6 / r["requests"] if r["requests"] else None
    if r["exhausted"]:
        run.log(f"  warning: {path}: the TokenRequest pool ran out ({r['exhausted']})")
    return r


class Side:
    """One side of a pair: a route on a server (and the key for an exchange)."""

    def __init__(self, server: Server, route: run.Route, key: str | None = None) -> None:
        self.server = server
        self.route = route
        self.key = key
        self.best = 0.0

    def once(self, wrk: str, seconds: float, tmp: Path) -> dict[str, Any]:
        r = measure(
            self.server,
            wrk,
            self.route.path,
            seconds,
            tmp,
            headers=self.route.headers,
            key=self.key,
            rate_guess=max(self.best, 3000.0),
        )
        self.best = max(self.best, r["rps"])
        return r


def measure_sides(
    name: str,
    baseline: Side,
    route: Side,
    wrk: str,
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    tmp: Path,
    floor: Callable[[], float] | None = None,
    floor_name: str | None = None,
) -> run.Pair:
    """Alternate the two sides (AB BA ...) for ``rounds`` rounds, after a warm-up of each.

    With ``floor`` (the store's plain durable claims/s), each round measures it
    too, as ``bench/run.py``'s floor-referenced pairs do.
    """
    pair = run.Pair(name, baseline.route, route.route, floor=floor, floor_name=floor_name)
    baseline.once(wrk, warmup, tmp)
    route.once(wrk, warmup, tmp)
    for i in range(rounds):
        order = [baseline, route] if i % 2 == 0 else [route, baseline]
        for side in order:
            r = side.once(wrk, seconds, tmp)
            (pair.base_runs if side is baseline else pair.route_runs).append(r)
            run.log(
                f"  {name:34s} round {i} {side.route.name:12s} {r['rps']:7.0f} req/s  "
                f"non-2xx {r['status']}  cpu/req {r['worker_cpu_us_per_request'] or 0:5.0f} us"
            )
        if floor is not None:
            pair.floor_runs.append(floor())
            run.log(f"  {name:34s} round {i} plain loop {pair.floor_runs[-1]:7.0f} claims/s")
    return pair


def bench_keys(
    wrk: str, *, rounds: int, seconds: float, warmup: float, tmp: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """The two ratios of :data:`TARGETS` and their figures."""
    from cryptography.fernet import Fernet

    encryption_key = Fernet.generate_key().decode()
    servers: dict[str, tuple[Server, str]] = {}
    servers_env: dict[str, dict[str, str]] = {}
    figures: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    try:
        # The floor pair's server also has flask-login and /empty (the baseline of
        # the static-key floor ratios); the others have only the provider.
        for label, audit, session_routes in (
            ("audit", True, False),
            ("no_audit", False, False),
            ("floor", True, True),
        ):
            folder = tmp / f"keys-{label}"
            folder.mkdir(exist_ok=True)
            env = app_settings(folder, encryption_key, audit=audit)
            key = managed_key(env["TOKENREQ_DATABASE_URL"], encryption_key)
            servers_env[label] = env
            server = Server(folder, {**env, "BENCH_SESSION_ROUTES": "1"} if session_routes else env)
            servers[label] = (server.__enter__(), key)
        audited, audit_key = servers["audit"]
        plain, plain_key = servers["no_audit"]
        floored, floor_key = servers["floor"]
        agent = {"User-Agent": USER_AGENT}

        def path(key: str) -> str:
            return f"/keys/{key.partition(':')[0]}/requestToken"

        # A token of the managed key, as Ably SDKs send it (base64).
        tr = sign_token_request(audit_key, capability=run.CAPABILITY, client_id=CLIENT_ID)
        status, _, body = run.http(
            "POST",
            audited.base + path(audit_key),
            data=tr.to_json().encode(),
            headers={"Content-Type": "application/json"},
        )
        if status != 200:
            raise RuntimeError(f"exchange failed: {status} {body[:200]!r}")
        token = json.loads(body)["token"]
        bearer = {"Authorization": "Bearer " + base64.b64encode(token.encode()).decode(), **agent}

        run.log("HTTP, managed keys on SQLite")

        def measure(name: str, baseline: Side, route: Side, **floor: Any) -> run.Pair:
            return measure_sides(
                name,
                baseline,
                route,
                wrk,
                rounds=rounds,
                seconds=seconds,
                warmup=warmup,
                tmp=tmp,
                **floor,
            )

        guarded = measure(
            "guarded_managed_vs_unguarded",
            Side(audited, run.Route("unguarded", "/channels/chat:lobby/unguarded", bearer)),
            Side(audited, run.Route("guarded", "/channels/chat:lobby/guarded", bearer)),
        )
        exchange = measure(
            "exchange_audit_vs_no_audit",
            Side(plain, run.Route("no_audit", path(plain_key), agent, exchange=True), plain_key),
            Side(audited, run.Route("audit", path(audit_key), agent, exchange=True), audit_key),
        )
        # Issue 10: the floor ratio of the exchange holds with managed keys and
        # the audit log on. Measured as exchange_http_sqlite_vs_floor is: the
        # baseline is /empty with a signed-in session (bench/apps.py's route, on
        # this server), the floor a plain loop of durable claims on its nonce file.
        nonces = servers_env["floor"]["TOKENREQ_NONCE_STORE"]
        session = {"Cookie": floored.login(), **agent}
        floor_pair = measure(
            "exchange_http_sqlite_managed_audit_vs_empty",
            Side(floored, run.Route("empty", "/empty", session)),
            Side(floored, run.Route("exchange", path(floor_key), agent, exchange=True), floor_key),
            floor=lambda: run.plain_claims_per_s(nonces, seconds),
            floor_name="exchange_http_sqlite_managed_audit_vs_floor",
        )
        for pair in (guarded, exchange):
            ratios[pair.name] = pair.ratio()
        floor_ratio = run.median(floor_pair.floor_ratios())
        ratios["exchange_http_sqlite_managed_audit_vs_floor"] = floor_ratio
        figures["http_managed_keys_sqlite"] = {
            "pairs": {p.name: p.summary() for p in (guarded, exchange, floor_pair)},
            "gunicorn": audited.config,
            "wrk": (
                f"-t1 -c8 -d{seconds}s; {rounds} rounds per pair, alternating order "
                "(AB BA ...); ratio = median of per-round ratios"
            ),
            "note": "exchange_audit_vs_no_audit: two servers that differ only in TOKENREQ_AUDIT",
        }
    finally:
        for server, _ in servers.values():
            server.stop()
    return ratios, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--rounds", type=int, help="rounds per pair (default 15, quick 3)")
    args = parser.parse_args()
    wrk = run.ensure_wrk()
    if wrk is None:
        return 1
    rounds = args.rounds or (3 if args.quick else 15)
    with tempfile.TemporaryDirectory(prefix="tokenreq-keys-bench-") as tmp:
        ratios, figures = bench_keys(
            wrk, rounds=rounds, seconds=1, warmup=1 if args.quick else 2, tmp=Path(tmp)
        )
    for name, target in TARGETS.items():
        value = ratios.get(name)
        print(f"{name:44s} {run.fmt(value):>6s}  (target >= {target})")
    name = "exchange_http_sqlite_managed_audit_vs_floor"
    print(f"{name:44s} {run.fmt(ratios.get(name)):>6s}  (informational)")
    print(json.dumps(figures, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
