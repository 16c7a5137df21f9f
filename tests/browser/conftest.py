"""What every browser test shares: Debian's Chromium, a clean environment, page errors.

- ``browser``: one headless Chromium per module, launched by Playwright from
  ``TOKENREQ_TEST_CHROMIUM`` or ``/usr/bin/chromium`` (never a download); it
  skips (fails under ``TOKENREQ_TEST_STRICT=1``) without Playwright or Chromium.
- ``_isolated``: no ``TOKENREQ_*`` / ``FLASK_*`` settings from outside reach
  the apps under test.
- :class:`PageErrors` (fixture ``page_errors``): a page's uncaught exceptions
  and console errors (CSP violations, failed loads), for tests to assert on;
  :func:`watched_page` opens a page that records them there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from ..conftest import unavailable

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TOKENREQ_* / FLASK_* settings from the outside environment."""
    for name in list(os.environ):
        if name.startswith(("TOKENREQ_", "FLASK_")) and not name.startswith("TOKENREQ_TEST"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    if sync_playwright is None:
        unavailable("playwright (Python) is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class PageErrors:
    """Uncaught exceptions and console errors (CSP violations, failed loads) of a page."""

    uncaught: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(message.text)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@contextlib.contextmanager
def watched_page(browser: Browser, errors: PageErrors, width: int, height: int) -> Iterator[Page]:
    """A page in a browser context of its own (closed afterwards), ``width`` x
    ``height``, its uncaught exceptions and console errors recorded in ``errors``."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.uncaught.append(str(exc)))
    page.on("console", errors.on_console)
    try:
        yield page
    finally:
        context.close()
