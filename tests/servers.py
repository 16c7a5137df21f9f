"""Test helpers: serve a WSGI app on loopback, or run it under gunicorn.

- :func:`serve_app` runs an app in this process with werkzeug's threaded
  server on ``127.0.0.1`` and a free port, yielding the base URL.
- :func:`run_gunicorn` starts ``python -m gunicorn`` on a free loopback port
  (gunicorn binds port 0 itself and reports the port, so there is no race),
  waits until it answers and all workers have booted, and stops it afterwards.
- :class:`HitCounter` counts requests per path at the server side.
- :func:`fire` sends one request many times at once (replay races).

Readiness is polled with a bounded loop; nothing here sleeps to let time pass.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from flask import Flask, request
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent

_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
_BOOTING = re.compile(r"Booting worker with pid: (\d+)")


@contextmanager
def serve_app(app: Any, host: str = "127.0.0.1", ssl_context: Any = None) -> Iterator[str]:
    """Serve a WSGI ``app`` on ``host`` and a free port in a thread; yields the base URL.

    With ``ssl_context`` (an :class:`ssl.SSLContext`) it serves HTTPS.
    """
    server = make_server(host, 0, app, threaded=True, ssl_context=ssl_context)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"{'https' if ssl_context else 'http'}://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class HitCounter:
    """Counts requests an app handles, by path (thread-safe).

    ``HitCounter(app)`` installs a ``before_request`` hook; ``counter["/path"]``
    is how many requests reached that path.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        @app.before_request
        def _count() -> None:
            with self._lock:
                self._counts[request.path] += 1

    def __getitem__(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


@dataclass
class Gunicorn:
    """A running gunicorn: its base URL, process and log lines (stderr) so far."""

    url: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        return "".join(self.log)


def _pump(stream: Any, sink: list[str], changed: threading.Condition) -> None:
    for line in stream:
        with changed:
            sink.append(line)
            changed.notify_all()
    with changed:
        sink.append("")  # EOF marker
        changed.notify_all()


@contextmanager
def run_gunicorn(
    app_spec: str,
    env: Mapping[str, str] | None = None,
    workers: int = 4,
    *,
    ready_path: str = "/",
    args: Sequence[str] = (),
    startup_timeout: float = 30.0,
    cwd: Path = ROOT,
) -> Iterator[Gunicorn]:
    """Run ``gunicorn app_spec`` on 127.0.0.1 with ``workers`` sync workers.

    ``env`` is added to this process's environment (``PYTHONPATH`` gets the
    project root, so ``examples.provider_app:create_app()`` imports). Yields a
    :class:`Gunicorn` once ``ready_path`` answers (any HTTP status) and every
    worker has booted; stops the server on exit. Raises ``RuntimeError`` with
    gunicorn's log when it does not start within ``startup_timeout``.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        str(workers),
        "--graceful-timeout",
        "5",
        "--log-level",
        "info",
        *args,
        app_spec,
    ]
    process = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    changed = threading.Condition()
    pump = threading.Thread(target=_pump, args=(process.stderr, lines, changed), daemon=True)
    pump.start()
    server = Gunicorn(url="", process=process, log=lines)
    try:
        deadline = time.monotonic() + startup_timeout

        def booted() -> tuple[str | None, int, bool]:
            text = "".join(lines)
            match = _LISTENING.search(text)
            return (
                match.group(1) if match else None,
                len(set(_BOOTING.findall(text))),
                bool(lines and lines[-1] == ""),
            )

        with changed:
            while True:
                port, count, eof = booted()
                if (port and count >= workers) or eof or process.poll() is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                changed.wait(timeout=min(remaining, 0.5))
        if not port or count < workers:
            raise RuntimeError(
                f"gunicorn did not start {workers} workers:\n{server.log_text()[-4000:]}"
            )
        server.url = f"http://127.0.0.1:{port}"
        while True:  # bounded readiness poll: the app loads lazily in each worker
            try:
                requests.get(server.url + ready_path, timeout=10)
                break
            except requests.RequestException:  # refused, or a worker still loading the app
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"gunicorn did not answer:\n{server.log_text()[-4000:]}"
                    ) from None
                time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # quick shutdown
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        pump.join(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


def fire(method: str, url: str, copies: int, **kwargs: Any) -> list[requests.Response]:
    """Send the same request ``copies`` times from as many threads, released together
    by a barrier (``kwargs`` go to :func:`requests.request`)."""
    barrier = threading.Barrier(copies)

    def send(_: int) -> requests.Response:
        barrier.wait(timeout=30)
        return requests.request(method, url, timeout=30, **kwargs)

    with ThreadPoolExecutor(max_workers=copies) as pool:
        return list(pool.map(send, range(copies)))
