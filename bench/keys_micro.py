"""Micro-benchmarks of the managed-key hot paths on a SQLite file (not part of `make bench`).

``calls`` (the default) prints microseconds per call for:

- ``token_revoked`` with a warm cache (on SQLite one read of the change counter,
  ``flask_tokenreq/keys/changes.py``; 8.6 µs per call with the generation read it
  replaced, 2.2 µs after): the token guard;
- ``state`` with a warm cache;
- ``get`` (key row + secrets + Fernet decrypt): exchanges and key auth.

``guard`` measures what ``guarded_managed_vs_unguarded`` (bench/keys_bench.py)
measures over HTTP, in-process and steadier: keys_bench's app, the same
managed-key token (base64, as Ably SDKs send it), requests through
``app.wsgi_app``. CPU per request of the unguarded and the guarded route,
timed one after the other in pairs; the medians over the pairs and the ratio
unguarded/guarded. ``--threads 2`` sends the requests from two threads at
once (as a gthread worker does; then the CPU is the process's).

``audit`` measures what ``exchange_audit_vs_no_audit`` measures over HTTP, in
process: exchanges of a managed key through two keys_bench apps, the audit
log on and off; the process's CPU per exchange (the audit's writer thread
included) in interleaved pairs, medians, the ratio off/on.

Run: ``.venv/bin/python bench/keys_micro.py [calls [N] | guard [--threads T] | audit] [--pairs P]``
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from flask_tokenreq.keys.sql import SqlKeyStore


def per_call_us(call: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 200)):
        call()
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def calls(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlKeyStore(f"sqlite:///{tmp}/bench.sqlite3", [Fernet.generate_key().decode()])
        store.create_tables()
        store.check()
        key, _ = store.create("bench")
        store.revoke_tokens(key.key_name, ["clientId:someone-else"])
        name = key.key_name
        results = {
            "token_revoked (warm cache)": per_call_us(
                lambda: store.token_revoked(name, "alice", None, 0), n
            ),
            "state (warm cache)": per_call_us(lambda: store.state(name), n),
            "get (row + decrypt)": per_call_us(lambda: store.get(name), n),
        }
        store.close()
    for label, us in results.items():
        print(f"{label:32s} {us:8.1f} us/call")


def _bench_modules() -> tuple[Any, Any]:
    """bench/keys_bench.py and bench/run.py."""
    bench = str(Path(__file__).resolve().parent)
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import keys_bench
    import run

    return keys_bench, run


def _app(folder: Path, encryption_key: str, *, audit: bool = True) -> tuple[Any, str]:
    """keys_bench's app on SQLite files in ``folder``, and its managed key."""
    keys_bench, _ = _bench_modules()
    settings = keys_bench.app_settings(folder, encryption_key, audit=audit)
    key = keys_bench.managed_key(settings["TOKENREQ_DATABASE_URL"], encryption_key)
    settings["BENCH_INSTANCE_PATH"] = str(folder)
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        return keys_bench.create_app(), key
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    if not status.startswith("200"):
        raise RuntimeError(f"{status}: the route refused the request")


def guard(threads: int, pairs: int, requests: int) -> None:
    _, run = _bench_modules()
    from werkzeug.test import EnvironBuilder

    from flask_tokenreq import sign_token_request

    with tempfile.TemporaryDirectory(prefix="tokenreq-keys-micro-") as name:
        app, key = _app(Path(name), Fernet.generate_key().decode())
        tr = sign_token_request(key, capability=run.CAPABILITY, client_id=run.CLIENT_ID)
        response = app.test_client().post(
            f"/keys/{key.partition(':')[0]}/requestToken",
            data=tr.to_json(),
            content_type="application/json",
        )
        token = response.get_json()["token"]
        headers = {
            "Authorization": "Bearer " + base64.b64encode(token.encode()).decode(),
            "User-Agent": run.USER_AGENT,
        }
        environs = {
            route: EnvironBuilder(
                path=f"/channels/chat:lobby/{route}", headers=list(headers.items())
            ).get_environ()
            for route in ("unguarded", "guarded")
        }

        def send(route: str, n: int) -> None:
            environ = environs[route]
            for _ in range(n):
                env = dict(environ, **{"wsgi.input": io.BytesIO()})
                body = app.wsgi_app(env, _start_response)
                for _ in body:
                    pass
                body.close()

        def cpu_us(route: str) -> float:
            if threads == 1:
                start = time.thread_time()
                send(route, requests)
                return (time.thread_time() - start) / requests * 1e6
            workers = [
                threading.Thread(target=send, args=(route, requests)) for _ in range(threads)
            ]
            start = time.process_time()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return (time.process_time() - start) / (requests * threads) * 1e6

        for route in environs:
            cpu_us(route)  # warm-up
        unguarded: list[float] = []
        guarded: list[float] = []
        for i in range(pairs):
            order = ("unguarded", "guarded") if i % 2 == 0 else ("guarded", "unguarded")
            for route in order:
                (unguarded if route == "unguarded" else guarded).append(cpu_us(route))
        app.extensions["tokenreq_provider"].close()
    u, g = statistics.median(unguarded), statistics.median(guarded)
    deltas = sorted(b - a for a, b in zip(unguarded, guarded, strict=True))
    print(
        f"guard, {threads} thread(s), {pairs} pairs of {requests} requests: CPU per request "
        f"unguarded {u:.1f} us, guarded {g:.1f} us; guard {statistics.median(deltas):.1f} us "
        f"(median of pairs; quartiles {deltas[len(deltas) // 4]:.1f}-"
        f"{deltas[3 * len(deltas) // 4]:.1f}); ratio unguarded/guarded {u / g:.3f}"
    )


def audit(pairs: int, requests: int) -> None:
    """Exchanges in-process, audit log on against off (two apps, as keys_bench's servers)."""
    _, run = _bench_modules()
    from werkzeug.test import EnvironBuilder

    from flask_tokenreq import sign_token_request

    encryption_key = Fernet.generate_key().decode()
    with tempfile.TemporaryDirectory(prefix="tokenreq-keys-micro-") as name:
        apps = {}
        for label, on in (("audit", True), ("no_audit", False)):
            (Path(name) / label).mkdir()
            apps[label] = _app(Path(name) / label, encryption_key, audit=on)

        def cpu_us(label: str, n: int) -> float:
            app, key = apps[label]
            path = f"/keys/{key.partition(':')[0]}/requestToken"
            environs = [
                EnvironBuilder(
                    method="POST",
                    path=path,
                    data=sign_token_request(
                        key, capability=run.CAPABILITY, client_id=run.CLIENT_ID
                    ).to_json(),
                    content_type="application/json",
                ).get_environ()
                for _ in range(n)
            ]
            start = time.process_time()  # the audit's writer thread included
            for env in environs:
                body = app.wsgi_app(env, _start_response)
                for _ in body:
                    pass
                body.close()
                # A worker waits on its socket between requests: the audit's
                # writer runs then, as it does under gunicorn.
                time.sleep(0.0003)
            return (time.process_time() - start) / n * 1e6

        for label in apps:
            cpu_us(label, requests)  # warm-up
        on_us: list[float] = []
        off_us: list[float] = []
        for i in range(pairs):
            order = ("audit", "no_audit") if i % 2 == 0 else ("no_audit", "audit")
            for label in order:
                (on_us if label == "audit" else off_us).append(cpu_us(label, requests))
        for app, _ in apps.values():
            app.extensions["tokenreq_provider"].close()
    a, b = statistics.median(on_us), statistics.median(off_us)
    print(
        f"audit, {pairs} pairs of {requests} exchanges: CPU per exchange (process) audit on "
        f"{a:.0f} us, off {b:.0f} us; audit {a - b:.0f} us; ratio off/on {b / a:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="calls", choices=("calls", "guard", "audit"))
    parser.add_argument("n", nargs="?", type=int, default=5000, help="calls: calls per figure")
    parser.add_argument("--threads", type=int, default=1, help="guard: sending threads")
    parser.add_argument("--pairs", type=int, help="guard, audit: pairs of runs (31, 11)")
    parser.add_argument("--requests", type=int, default=300, help="guard, audit: per run")
    argv = sys.argv[1:]
    if argv[:1] and argv[0].isdigit():  # the former usage: keys_micro.py N
        argv.insert(0, "calls")
    args = parser.parse_args(argv)
    if args.what == "calls":
        calls(args.n)
    elif args.what == "guard":
        guard(args.threads, args.pairs or 31, args.requests)
    else:
        audit(args.pairs or 11, args.requests)


if __name__ == "__main__":
    main()
