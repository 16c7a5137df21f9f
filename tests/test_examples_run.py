"""``make examples``: both example apps in one command; Ctrl-C stops both, nothing is left.

"Left" is checked on the process group the command was started in: after
Ctrl-C (SIGINT to the group, as a terminal sends it) no process of it may
remain. An orphaned app would stay in the group after its parent died.
"""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

import pytest
import requests

from tests.conftest import unavailable
from tests.examples_stack import (
    Examples,
    example_env,
    group_alive,
    launcher_command,
    read_until_running,
    run_examples,
    start,
    stop_group,
    wait_group_gone,
)
from tests.servers import ROOT

ALICE = {"username": "alice", "password": "alice-password"}


def exchange_once(examples: Examples) -> dict[str, object]:
    """Sign in at the issuer, get a TokenRequest, exchange it at the provider."""
    session = requests.Session()
    session.post(examples.issuer_url + "/login", data=ALICE, timeout=10).raise_for_status()
    token_request = session.get(examples.issuer_url + "/api/tokenreq/token", timeout=10).json()
    response = requests.post(
        f"{examples.provider_url}/keys/{token_request['keyName']}/requestToken",
        json=token_request,
        timeout=10,
    )
    response.raise_for_status()
    details: dict[str, object] = response.json()
    return details


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_make_examples_serves_both_apps_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        unavailable("make is not installed")
    assert make is not None
    command = [make, "--no-print-directory", "examples", "ISSUER_PORT=0", "PROVIDER_PORT=0"]
    process = start(command, example_env(tmp_path))
    examples = Examples(process)
    try:
        read_until_running(examples)
        details = exchange_once(examples)
        assert details["clientId"] == "alice"
        assert "issuer   |" in examples.output()
        assert "provider |" in examples.output()
    finally:
        stop_group(process, signal.SIGINT)  # Ctrl-C
    assert not group_alive(process.pid), "make examples left processes behind"
    assert refused(examples.issuer_url)
    assert refused(examples.provider_url)


def test_sigterm_to_the_launcher_alone_stops_both_apps(tmp_path: Path) -> None:
    with run_examples(tmp_path) as examples:
        examples.process.send_signal(signal.SIGTERM)  # the launcher only, not its group
        assert examples.process.wait(timeout=30) == 0
        assert wait_group_gone(examples.process.pid)


def test_when_one_app_cannot_start_the_other_is_stopped(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(launcher_command(0, port), example_env(tmp_path))
        try:
            output, _ = process.communicate(timeout=60)
        finally:
            stop_group(process)
    assert process.returncode == 1
    assert "provider exited (1): stopping the other app" in output
    assert "issuer   |" in output
    assert not group_alive(process.pid)


def test_makefile_runs_the_launcher_on_the_documented_ports() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "ISSUER_PORT ?= 5000" in makefile
    assert "PROVIDER_PORT ?= 5001" in makefile
    assert (
        "examples/run.py --issuer-port $(ISSUER_PORT) --provider-port $(PROVIDER_PORT)" in makefile
    )


@pytest.mark.parametrize("app", ["issuer_app.py", "provider_app.py"])
def test_each_app_runs_as_a_script(tmp_path: Path, app: str) -> None:
    """``python examples/<app>.py --port 0`` works from a checkout (what run.py starts)."""
    import sys

    process = start(
        [sys.executable, str(ROOT / "examples" / app), "--port", "0"], example_env(tmp_path)
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "Running on http://127.0.0.1:" in line:
                url = line.split("Running on ")[1].strip()
                assert requests.get(url + "/", timeout=10).status_code in (200, 404)
                break
        else:
            pytest.fail("the app did not start")
    finally:
        stop_group(process)
    assert not group_alive(process.pid)
