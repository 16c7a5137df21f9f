"""Run ``make examples`` (``examples/run.py``) for a test: both example apps, as a user would.

:func:`run_examples` starts the launcher in its own process group with port 0
for both apps, reads the ports each app reports (``issuer   |  * Running on
http://127.0.0.1:PORT``), and on exit stops the whole group with SIGINT, as
Ctrl-C in a terminal would. :func:`wait_group_gone` tells whether any process
of the group is left (an orphan).

The apps' databases (nonces, messages, sign-in sessions) go to a temporary
folder given by the caller, never to the checkout.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import ROOT

_RUNNING = re.compile(r"^(issuer|provider)\s*\|\s+\* Running on (http://127\.0\.0\.1:\d+)")
KEY = "examples.test:examples-test-secret-0123456789abcdef0123456789"
SESSION_SECRET = "examples-test-session-secret-0123456789abcdef"
SIGNING_SECRET = "examples-test-signing-secret-0123456789abcdef"


@dataclass
class Examples:
    """A running ``make examples``: its process, URLs and output lines so far."""

    process: subprocess.Popen[str]
    urls: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @property
    def issuer_url(self) -> str:
        return self.urls["issuer"]

    @property
    def provider_url(self) -> str:
        return self.urls["provider"]

    def output(self) -> str:
        return "".join(self.lines)


def example_env(tmp: Path) -> dict[str, str]:
    """Settings for both apps (real, not development ones) with databases under ``tmp``."""
    return {
        "TOKENREQ_KEY": KEY,
        "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
        "FLASK_SECRET_KEY": SESSION_SECRET,
        "TOKENREQ_NONCE_STORE": f"sqlite:///{tmp / 'nonces.sqlite3'}",
        "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp / 'messages.sqlite3'}",
        "FLASK_LOGIN_SESSIONS_DATABASE": f"sqlite:///{tmp / 'sessions.sqlite3'}",
    }


def launcher_command(issuer_port: int = 0, provider_port: int = 0) -> list[str]:
    """What ``make examples`` runs, with the given ports."""
    return [
        sys.executable,
        str(ROOT / "examples" / "run.py"),
        "--issuer-port",
        str(issuer_port),
        "--provider-port",
        str(provider_port),
    ]


def start(command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``command`` in a new process group (its pid is the group id)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENREQ_", "FLASK_"))}
    full_env.update(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        list(command),
        cwd=ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def read_until_running(examples: Examples, timeout: float = 60.0) -> None:
    """Collect output until both apps report their URL; raises with the output if not."""
    lines: queue.Queue[str | None] = queue.Queue()
    assert examples.process.stdout is not None
    stream = examples.process.stdout

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while len(examples.urls) < 2:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError(f"make examples did not start both apps:\n{examples.output()}")
        examples.lines.append(line)
        match = _RUNNING.match(line)
        if match:
            examples.urls[match.group(1)] = match.group(2)
    # Keep collecting in the background (the list is only appended to).
    threading.Thread(target=_drain, args=(lines, examples.lines), daemon=True).start()


def _drain(lines: queue.Queue[str | None], sink: list[str]) -> None:
    while (line := lines.get()) is not None:
        sink.append(line)


def group_alive(pgid: int) -> bool:
    """Whether any process (other than zombies reaped by us) is left in the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, timeout: float = 30.0) -> bool:
    """Poll (bounded) until no process of the group is left; ``False`` if some stay."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    """Send ``sig`` to the whole group (Ctrl-C), wait for the leader; kill leftovers."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        return process.wait(timeout=30)
    finally:
        if not wait_group_gone(process.pid, timeout=30):
            os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def run_examples(
    tmp: Path, command: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Iterator[Examples]:
    """Both example apps as ``make examples`` runs them; stopped by Ctrl-C (SIGINT) on exit."""
    process = start(command or launcher_command(), {**example_env(tmp), **(env or {})})
    examples = Examples(process)
    try:
        read_until_running(examples)
        yield examples
    finally:
        stop_group(process)
