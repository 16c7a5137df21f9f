"""Shared fixtures: real services, strict mode, an injectable clock.

Tests that need Redis, PostgreSQL, Node or Chromium skip with a reason when
the service is absent, unless ``TOKENREQ_TEST_STRICT=1`` (set by ``.ci/run``),
which turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

STRICT = os.environ.get("TOKENREQ_TEST_STRICT") == "1"
REDIS_URL = os.environ.get("TOKENREQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get(
    "TOKENREQ_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ROOT = Path(__file__).resolve().parent.parent

#: Test keys: secrets of at least 32 bytes.
SECRET = "s3cr3t-0123456789abcdef0123456789abcdef"
KEY_NAME = "appid.keyid"
KEY = f"{KEY_NAME}:{SECRET}"
OTHER_SECRET = "other-secret-9876543210fedcba9876543210fedcba"
OTHER_KEY = f"appid.other:{OTHER_SECRET}"


def unavailable(reason: str) -> None:
    """Skip, or fail under TOKENREQ_TEST_STRICT=1."""
    if STRICT:
        pytest.fail(f"required service unavailable (TOKENREQ_TEST_STRICT=1): {reason}")
    pytest.skip(reason)


class FakeClock:
    """A settable clock in integer milliseconds (inject as ``now_ms``)."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        import redis
    except ImportError:  # pragma: no cover
        unavailable("redis-py is not installed")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(DATABASE_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:
        unavailable(f"PostgreSQL not reachable at {DATABASE_URL}: {exc}")
    return DATABASE_URL


@pytest.fixture
def unique() -> str:
    """A unique suffix so tests sharing a server do not see each other's data."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        unavailable("node is not installed")
    assert path is not None
    if not (ROOT / "tests" / "interop" / "node_modules" / "ably").is_dir():
        unavailable("ably-js is not installed: run `make node` (npm ci in tests/interop)")
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    path = os.environ.get("TOKENREQ_TEST_CHROMIUM") or shutil.which("chromium")
    if not path or not Path(path).exists():
        unavailable("chromium is not installed (apt-get install -y chromium)")
    assert path is not None
    return path


@pytest.fixture
def instance_dir(tmp_path: Path) -> Path:
    path = tmp_path / "instance"
    path.mkdir()
    return path
