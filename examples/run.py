"""Run both example apps at once: the issuer on :5000 and the provider on :5001.

``make examples`` runs this. It is what the README's ably-js and ably-python
snippets talk to: sign in and get TokenRequests at ``http://127.0.0.1:5000``
(``POST /login``, ``/api/tokenreq/token``), exchange them and use the tokens at
``http://127.0.0.1:5001`` (``/keys/...``, ``/channels/<name>/messages``).

Each app's output is shown with its name in front. Ctrl-C stops both; when
either app exits (say, its port is taken) the other is stopped too, so no
process is left behind. Port 0 picks a free port (shown in the output).
Settings come from the environment as for each app (``TOKENREQ_*``,
``FLASK_*``); without them both use the same development keys.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO

HERE = Path(__file__).resolve().parent
#: How long an app gets to stop after SIGINT, then after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 5.0


class Stop(Exception):
    """SIGTERM or SIGHUP: stop like Ctrl-C."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _pump(name: str, stream: IO[str], out: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{name:<8} | {line}")
            out.flush()


def _stop(processes: dict[str, subprocess.Popen[str]]) -> None:
    """SIGINT (as Ctrl-C would), then SIGTERM, then SIGKILL, to whatever still runs."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        running = [p for p in processes.values() if p.poll() is None]
        if not running:
            return
        for process in running:
            process.send_signal(sig)
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--issuer-port", type=int, default=5000, help="default 5000")
    parser.add_argument("--provider-port", type=int, default=5001, help="default 5001")
    args = parser.parse_args(argv)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    issuer_env = dict(env)
    if args.provider_port:  # format=token: the issuer exchanges with this provider itself
        issuer_env.setdefault("TOKENREQ_PROVIDER_URL", f"http://{args.host}:{args.provider_port}")
    apps = {
        "issuer": (HERE / "issuer_app.py", args.issuer_port, issuer_env),
        "provider": (HERE / "provider_app.py", args.provider_port, env),
    }
    print(
        "flask-tokenreq examples (Ctrl-C stops both)\n"
        f"  issuer    http://{args.host}:{args.issuer_port}   "
        "POST /login, GET /api/tokenreq/token\n"
        f"  provider  http://{args.host}:{args.provider_port}   "
        "POST /keys/<keyName>/requestToken, /channels/<name>/messages\n"
        "  logins: alice / alice-password (publish), bob / bob-password (read only), "
        "carol / carol-password (publish)",
        flush=True,
    )

    # Ctrl-C raises KeyboardInterrupt here even if this process was started with
    # SIGINT ignored (as background jobs are); the apps then inherit the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    lock = threading.Lock()
    processes: dict[str, subprocess.Popen[str]] = {}
    pumps: list[threading.Thread] = []
    status = 0
    try:
        for name, (script, port, app_env) in apps.items():
            process = subprocess.Popen(
                [sys.executable, str(script), "--host", args.host, "--port", str(port)],
                env=app_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            processes[name] = process
            assert process.stdout is not None
            pump = threading.Thread(
                target=_pump, args=(name, process.stdout, sys.stdout, lock), daemon=True
            )
            pump.start()
            pumps.append(pump)
        # Wait until one app exits (or a signal arrives).
        pid, wait_status = os.wait()
        name = next((n for n, p in processes.items() if p.pid == pid), "?")
        code = os.waitstatus_to_exitcode(wait_status)
        for process in processes.values():
            if process.pid == pid:
                process.returncode = code
        print(f"{name} exited ({code}): stopping the other app", file=sys.stderr, flush=True)
        status = 1
    except (KeyboardInterrupt, Stop):
        status = 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        _stop(processes)
        for pump in pumps:
            pump.join(timeout=STOP_TIMEOUT)
    return status


if __name__ == "__main__":
    sys.exit(main())
