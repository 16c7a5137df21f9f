"""``make demo`` runs on managed keys out of the box.

Without ``TOKENREQ_KEY`` and ``TOKENREQ_KEY_ENCRYPTION_KEYS``, the demo makes
a development encryption key (kept in the instance folder, the same after a
restart and in every worker) and a managed key, "Demo key", that its issuer
signs with and its provider serves from the database.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from examples import demo
from examples.provider_app import DEV_ENCRYPTION_KEY_FILE, DEV_MANAGED_KEY_NAME
from flask_tokenreq import sign_token_request
from flask_tokenreq.keys.secret import check_secret_format

SETTINGS = {
    "SECRET_KEY": "demo-keys-session-key-0123456789abcdef0123",
    "TOKENREQ_SIGNING_SECRET": "demo-keys-signing-secret-0123456789abcdef",
    "TOKENREQ_DEMO_POLL_MS": 0,
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("TOKENREQ_", "FLASK_")) and not name.startswith("TOKENREQ_TEST"):
            monkeypatch.delenv(name)


def exchange_code(app: Flask) -> int:
    treq = sign_token_request(app.config["TOKENREQ_KEY"])
    response = app.test_client().post(
        f"/provider/keys/{treq.key_name}/requestToken", json=treq.to_dict()
    )
    return 200 if response.status_code == 200 else int(response.headers["X-Ably-ErrorCode"])


def close(app: Flask) -> None:
    app.extensions["tokenreq_provider"].close()


def test_the_demo_signs_with_a_managed_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    instance = tmp_path / "instance"
    with caplog.at_level(logging.WARNING):
        app = demo.create_app(SETTINGS, instance_path=instance)
    assert "development encryption key" in caplog.text
    key_file = instance / DEV_ENCRYPTION_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_name, _, secret = app.config["TOKENREQ_KEY"].partition(":")
    assert check_secret_format(secret)
    assert secret not in caplog.text
    with app.app_context():
        keys = app.extensions["tokenreq_provider"].keys
        assert keys.static is None
        [info] = keys.for_change().list()
    assert (info.key_name, info.name) == (key_name, DEV_MANAGED_KEY_NAME)
    assert exchange_code(app) == 200

    # A restart (or another worker) finds the same encryption key and the same key.
    again = demo.create_app(SETTINGS, instance_path=instance)
    assert again.config["TOKENREQ_KEY"] == app.config["TOKENREQ_KEY"]
    assert exchange_code(again) == 200

    # Revoked (say, with `flask tokenreq keys revoke`): refused at once; the
    # next start makes a new demo key.
    with app.app_context():
        app.extensions["tokenreq_provider"].keys.for_change().revoke(key_name, "rotate the demo")
    assert exchange_code(again) == 40131
    fresh = demo.create_app(SETTINGS, instance_path=instance)
    assert fresh.config["TOKENREQ_KEY"].partition(":")[0] != key_name
    assert exchange_code(fresh) == 200
    for each in (app, again, fresh):
        close(each)


def test_a_configured_static_key_keeps_working(tmp_path: Path) -> None:
    key = "demo.static:demo-static-secret-0123456789abcdef0123456789"
    app = demo.create_app({**SETTINGS, "TOKENREQ_KEY": key}, instance_path=tmp_path)
    with app.app_context():
        keys = app.extensions["tokenreq_provider"].keys
        assert keys.managed is None
    assert exchange_code(app) == 200
    assert not (tmp_path / DEV_ENCRYPTION_KEY_FILE).exists()
    close(app)


def _race_for_the_key(instance: str, start: Any, out: Any) -> None:
    from examples.provider_app import development_encryption_key

    start.wait()
    out.put(development_encryption_key(instance))


def test_workers_starting_at_once_on_a_fresh_folder_get_one_complete_key(
    tmp_path: Path,
) -> None:
    """No worker may read the key file while another is still writing it."""
    import multiprocessing

    from cryptography.fernet import Fernet

    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        instance = str(tmp_path / f"instance-{round_}")
        start, out = ctx.Barrier(6), ctx.Queue()
        workers = [
            ctx.Process(target=_race_for_the_key, args=(instance, start, out)) for _ in range(6)
        ]
        for worker in workers:
            worker.start()
        keys = {out.get(timeout=30) for _ in workers}
        for worker in workers:
            worker.join(timeout=30)
        [key] = keys
        Fernet(key)  # a complete, valid key
        assert sorted(p.name for p in Path(instance).iterdir()) == [DEV_ENCRYPTION_KEY_FILE]
