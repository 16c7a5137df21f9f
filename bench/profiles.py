#!/usr/bin/env python3
"""Profiles behind docs/performance.md (not part of `make bench`).

HTTP routes, under wrk load, sampled in the gunicorn workers with py-spy::

    .venv/bin/python bench/profiles.py http exchange --store sqlite --seconds 6
    .venv/bin/python bench/profiles.py http guarded

prints the functions with the largest share of the workers' samples (inclusive
and self), aggregated over both workers. In-process paths with pyinstrument::

    .venv/bin/python bench/profiles.py micro sign|verify|mint

py-spy needs ptrace permission on the workers (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import run  # bench/run.py (sys.path[0] is bench/ when run as a script)

ROUTES = ("empty", "issuer", "exchange", "unguarded", "guarded")


def http_profile(
    route_name: str,
    store: str,
    seconds: float,
    top: int,
    *,
    native: bool = False,
    gil: bool = False,
    sqlite_dir: Path | None = None,
) -> None:
    wrk = run.ensure_wrk()
    if wrk is None:
        sys.exit("wrk is required")
    py_spy = Path(sys.executable).with_name("py-spy")
    with tempfile.TemporaryDirectory(prefix="tokenreq-profile-") as tmpname:
        tmp = Path(tmpname)
        urls = {
            "sqlite": f"sqlite:///{(sqlite_dir or tmp) / f'profile-{os.getpid()}.sqlite3'}",
            "redis": run.REDIS_URL,
            "postgres": run.pg_url(run.DATABASE_URL),
            "memory": "memory://",
        }
        if store == "redis":
            run.flush_redis(run.REDIS_URL)
        if store == "postgres":
            run.reset_postgres_schema(run.DATABASE_URL)
        with run.Gunicorn(urls[store], tmp) as server:
            cookie = server.login()
            session = {"Cookie": cookie, "User-Agent": run.USER_AGENT}
            tr = run.sign_token_request(run.apps.KEY, capability=run.CAPABILITY, client_id="x")
            path = f"/keys/{run.apps.KEY_NAME}/requestToken"
            _, _, body = run.http(
                "POST",
                server.base + path,
                data=tr.to_json().encode(),
                headers={"Content-Type": "application/json"},
            )
            token = run.json.loads(body)["token"]
            bearer = {
                "Authorization": "Bearer " + run.base64.b64encode(token.encode()).decode(),
                "User-Agent": run.USER_AGENT,
            }
            routes = {
                "empty": run.Route("empty", "/empty", session),
                "issuer": run.Route("issuer", "/tokenreq/token", session),
                "exchange": run.Route("exchange", path, {}, exchange=True),
                "unguarded": run.Route("unguarded", "/channels/chat:lobby/unguarded", bearer),
                "guarded": run.Route("guarded", "/channels/chat:lobby/guarded", bearer),
            }
            route = routes[route_name]
            load_seconds = seconds + 2
            outputs = []
            procs = []
            for pid in server.workers():
                out = tmp / f"spy-{pid}.txt"
                outputs.append(out)
                procs.append(
                    subprocess.Popen(
                        [
                            str(py_spy),
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(int(seconds)),
                            "--rate",
                            "250",
                            "--format",
                            "raw",
                            # --native needs to pause the process for each sample
                            *(["--native"] if native else ["--nonblocking"]),
                            *(["--gil"] if gil else []),
                            "-o",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
            result: dict[str, float] = {}

            def load() -> None:
                r = run.measure_once(server, wrk, route, load_seconds, tmp)
                result["rps"] = r["rps"]

            t = threading.Thread(target=load)
            t.start()
            time.sleep(0.5)
            for p in procs:
                _, err = p.communicate(timeout=seconds + 30)
                if p.returncode:
                    print(f"py-spy failed: {err.decode()[-500:]}", file=sys.stderr)
            t.join()
        report(outputs, route_name, store, result.get("rps", 0.0), top)


def report(files: list[Path], route: str, store: str, rps: float, top: int) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_short(x) for x in stack.split(";")]
            # Idle gthread workers wait in select/poll: keep only busy samples.
            total += count
            for name in set(frames):
                inclusive[name] += count
            own[frames[-1]] += count
    print(f"route {route}, nonce store {store}: {rps:.0f} req/s under py-spy, {total} samples")
    print(f"{'incl %':>7s} {'self %':>7s}  function")
    for name, n in inclusive.most_common(top):
        print(f"{100 * n / total:7.1f} {100 * own[name] / total:7.1f}  {name}")


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "site-packages" in path or "flask_tokenreq" in path else path
    return f"{name} ({short})"


def micro_profile(which: str) -> None:
    from pyinstrument import Profiler

    from flask_tokenreq import sign_token_request

    n = 200_000
    if which == "sign":

        def work() -> None:
            for _ in range(n):
                sign_token_request(
                    run.apps.KEY, ttl=run.TTL, capability=run.CAPABILITY, client_id=run.CLIENT_ID
                )

    elif which == "verify":
        from flask_tokenreq import verify_mac
        from flask_tokenreq.stores.memory import MemoryNonceStore
        from flask_tokenreq.tokenrequest import TokenRequest

        pool = [
            sign_token_request(
                run.apps.KEY, ttl=run.TTL, capability=run.CAPABILITY, client_id=run.CLIENT_ID
            ).to_dict()
            for _ in range(n)
        ]
        store = MemoryNonceStore(warn=False)

        def work() -> None:
            for body in pool:
                treq = TokenRequest.from_dict(body)
                if verify_mac(treq, run.apps.KEY_SECRET):
                    now = run.now_ms()
                    if abs(treq.timestamp - now) <= run.WINDOW_MS:
                        store.claim(treq.key_name, treq.nonce, treq.timestamp + run.WINDOW_MS)

    else:
        from flask_tokenreq.capability import Capability
        from flask_tokenreq.keys import StaticKeyStore
        from flask_tokenreq.tokens import TokenService

        service = TokenService(secret=run.apps.SIGNING_SECRET)
        keys = StaticKeyStore.from_config([run.apps.KEY])
        cap = Capability.parse(run.CAPABILITY)
        n = 50_000

        def work() -> None:
            for _ in range(n):
                now = run.now_ms()
                issued = service.mint(
                    key_name=run.apps.KEY_NAME,
                    capability=cap,
                    client_id=run.CLIENT_ID,
                    issued_ms=now,
                    expires_ms=now + run.TTL,
                )
                service.verify(issued.token, keys)

    profiler = Profiler(interval=0.0005)
    profiler.start()
    work()
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    h = sub.add_parser("http")
    h.add_argument("route", choices=ROUTES)
    h.add_argument("--store", default="sqlite", choices=("sqlite", "redis", "postgres", "memory"))
    h.add_argument("--seconds", type=float, default=6)
    h.add_argument("--top", type=int, default=30)
    h.add_argument("--native", action="store_true", help="include C frames (sqlite3, libpq)")
    h.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL")
    h.add_argument("--sqlite-dir", type=Path, help="folder of the SQLite file (default: tmp)")
    m = sub.add_parser("micro")
    m.add_argument("what", choices=("sign", "verify", "mint"))
    args = parser.parse_args()
    if args.kind == "http":
        http_profile(
            args.route,
            args.store,
            args.seconds,
            args.top,
            native=args.native,
            gil=args.gil,
            sqlite_dir=args.sqlite_dir,
        )
    else:
        micro_profile(args.what)


if __name__ == "__main__":
    main()
