"""The seed-flow examples with a page, in Debian's Chromium driven by Playwright.

- ``examples/react_ably``: the real ably-js browser bundle, served by the
  example from ``tests/interop/node_modules/ably``, gets tokens through
  ``authUrl`` and through an ``authCallback``, publishes, reads history,
  renews its token when it expires, and shows a refusal with its code.
- ``examples/archiva_app.py``: the project page's cached ``getToken()``.

Time is injected on both sides and moved together: the server's through the
plugin's ``tokenreq_clock``, the page's through Playwright's clock. Nothing
waits for real time to pass. Each test saves a screenshot under its tmp dir.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from examples import archiva_app
from examples.react_ably import app as react_ably
from flask_tokenreq.testing import ManualClock, Recorder

from ..conftest import ROOT, unavailable
from ..servers import serve_app

with contextlib.suppress(ImportError):  # without Playwright, `browser` skips
    from playwright.sync_api import Browser, Page, Response, expect

pytestmark = pytest.mark.browser

SETTINGS = {
    "SECRET_KEY": "seed-browser-session-key-0123456789abcdef",
    "TOKENREQ_KEY": "seed.browser:seed-browser-secret-0123456789abcdef0123",
    "TOKENREQ_SIGNING_SECRET": "seed-browser-signing-secret-0123456789abcdef",
    "TOKENREQ_NONCE_STORE": "memory://",
}


@pytest.fixture
def page(browser: Browser, tokenreq_clock: ManualClock) -> Iterator[Page]:
    """A page whose clock is the server's: fixed at ``tokenreq_clock`` until moved."""
    context = browser.new_context(viewport={"width": 1000, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.clock.set_fixed_time(tokenreq_clock() / 1000)  # Playwright for Python takes seconds
    yield page
    context.close()
    assert errors == []


def move_clocks(page: Page, clock: ManualClock, to_ms: int) -> None:
    """Set the server's and the page's clock to ``to_ms``."""
    clock.set(to_ms)
    page.clock.set_fixed_time(to_ms / 1000)


def sign_in(page: Page, url: str, user: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(f"{user}-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin")).to_have_count(0)  # the page reloaded, signed in


# -- Ably's "Vite + React" article: real ably-js --------------------------------------


@pytest.fixture
def ably_page(tmp_path: Path, tokenreq_clock: ManualClock) -> Iterator[str]:
    if not react_ably.ABLY_JS.is_file():
        unavailable("ably-js is not installed: run `make node` (npm ci in tests/interop)")
    tokenreq_clock.set(tokenreq_clock() // 1000 * 1000)
    app = react_ably.create_app(
        {**SETTINGS, "TOKENREQ_TTL": 60_000}, instance_path=str(tmp_path / "instance")
    )
    with serve_app(app) as url:
        yield url


def publish(page: Page, text: str) -> None:
    page.get_by_label("message").fill(text)
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("status")).to_have_text(f'published "{text}"')


@pytest.mark.parametrize("flow", ["authUrl", "authCallback"])
def test_ably_js_publishes_reads_history_and_renews_its_token(
    page: Page,
    ably_page: str,
    flow: str,
    tokenreq_clock: ManualClock,
    tokenreq_recorder: Recorder,
    tmp_path: Path,
) -> None:
    answers: list[Response] = []
    page.on("response", lambda response: answers.append(response))
    sign_in(page, ably_page, "alice")
    page.goto(f"{ably_page}/?flow={flow}&channel=chat")
    expect(page.locator("#flow")).to_have_text(flow)
    expect(page.get_by_role("status")).to_have_text("ready")  # rest.time() answered

    publish(page, "first")
    expect(page.locator("#token-count")).to_have_text("1")
    expect(page.locator("#client-id")).to_have_text("alice")
    [first] = tokenreq_recorder.exchanges
    assert first.details is not None
    expires = int(first.details["expires"])
    assert expires == tokenreq_clock() + 60_000
    expect(page.locator("#expires")).to_have_text(str(expires))

    move_clocks(page, tokenreq_clock, expires - 1_000)  # the token is still good
    publish(page, "second")
    expect(page.locator("#token-count")).to_have_text("1")
    assert len(tokenreq_recorder.exchanges) == 1

    move_clocks(page, tokenreq_clock, expires + 1_000)  # it has expired: ably-js renews first
    publish(page, "third")
    expect(page.locator("#token-count")).to_have_text("2")
    expect(page.locator("#issued")).to_have_text(str(expires + 1_000))
    expect(page.locator("#messages li")).to_have_text(
        ["alice: first", "alice: second", "alice: third"]
    )

    # Each TokenRequest the route signed was exchanged once, by ably-js, and accepted.
    signed = tokenreq_recorder.token_requests
    assert [(e.token_request, e.status, e.code) for e in tokenreq_recorder.exchanges] == [
        (signed[0], 200, None),
        (signed[1], 200, None),
    ]
    assert [t.timestamp for t in signed] == [expires - 60_000, expires + 1_000]
    # The expired token was never sent: no answer was a 401.
    assert not [a.url for a in answers if a.status == 401]
    paths = [urlsplit(a.url).path for a in answers]
    assert paths.count("/keys/seed.browser/requestToken") == 2  # by ably-js, from the page
    assert paths.count("/api/ably/token") == 2
    page.screenshot(path=str(tmp_path / f"ably-{flow}.png"), full_page=True)


@pytest.mark.parametrize("flow", ["authUrl", "authCallback"])
def test_a_refusal_is_shown_with_its_code(
    page: Page, ably_page: str, flow: str, tokenreq_recorder: Recorder, tmp_path: Path
) -> None:
    sign_in(page, ably_page, "bob")
    page.goto(f"{ably_page}/?flow={flow}&channel=chat")
    expect(page.get_by_role("status")).to_have_text("ready")
    page.get_by_label("message").fill("may bob publish?")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("alert")).to_contain_text("Error 40160")
    expect(page.get_by_role("alert")).to_contain_text("publish")
    # bob's token works for what he may do.
    page.get_by_role("button", name="History").click()
    expect(page.locator("#capability")).to_have_text('{"*":["history","subscribe"]}')
    expect(page.locator("#token-count")).to_have_text("1")
    assert [(e.status, e.code) for e in tokenreq_recorder.exchanges] == [(200, None)]
    page.screenshot(path=str(tmp_path / f"refused-{flow}.png"), full_page=True)


def test_the_bundle_is_the_npm_packages_browser_build(ably_page: str) -> None:
    import json

    import requests

    package = json.loads((ROOT / "tests/interop/node_modules/ably/package.json").read_text())
    assert package["browser"] == "./build/ably.js"
    response = requests.get(f"{ably_page}/vendor/ably.js", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert response.content == react_ably.ABLY_JS.read_bytes()
    assert f"Ably JavaScript Library v{package['version']}" in response.text[:300]


# -- Archiva: the frontend token route and the cached getToken() ------------------------


@pytest.fixture
def archiva(tmp_path: Path, tokenreq_clock: ManualClock) -> Iterator[str]:
    app = archiva_app.create_app(SETTINGS, instance_path=str(tmp_path / "instance"))
    with serve_app(app) as url:
        yield url


def test_archiva_page_gets_one_cached_token_and_renews_it_before_expiry(
    page: Page,
    archiva: str,
    tokenreq_clock: ManualClock,
    tokenreq_recorder: Recorder,
    tmp_path: Path,
) -> None:
    sign_in(page, archiva, "alice")
    expect(page.get_by_role("link", name="p1")).to_be_visible()
    start = tokenreq_clock()
    page.goto(f"{archiva}/projects/p1")
    expect(page.locator("#events li")).to_have_text(["report.pdf uploaded", "report.pdf archived"])
    expect(page.locator("#ttl")).to_have_text("90 s")
    expect(page.locator("#capability")).to_have_text('{"project:p1":["history","subscribe"]}')

    for _ in range(3):  # getToken() answers from its cache
        page.get_by_role("button", name="Refresh events").click()
    expect(page.locator("#refreshes")).to_have_text("4")  # with the one on load
    move_clocks(page, tokenreq_clock, start + 74_000)  # 16 s before expiry: still cached
    page.get_by_role("button", name="Refresh events").click()
    expect(page.locator("#refreshes")).to_have_text("5")
    expect(page.locator("#issued")).to_have_text(str(start))
    assert len(tokenreq_recorder.token_requests) == 1

    move_clocks(page, tokenreq_clock, start + 76_000)  # within 15 s of expiry: renewed
    page.get_by_role("button", name="Refresh events").click()
    expect(page.locator("#refreshes")).to_have_text("6")
    expect(page.locator("#issued")).to_have_text(str(start + 76_000))
    signed = tokenreq_recorder.token_requests
    assert [(t.ttl, t.capability) for t in signed] == [
        (90_000, '{"project:p1":["history","subscribe"]}')
    ] * 2
    assert [(e.status, e.code) for e in tokenreq_recorder.exchanges] == [(200, None)] * 2

    page.get_by_role("button", name="Try to add an event").click()
    expect(page.get_by_role("alert")).to_contain_text("Error 40160")
    page.screenshot(path=str(tmp_path / "archiva.png"), full_page=True)


def test_archiva_page_of_a_project_the_user_may_not_read(
    page: Page, archiva: str, tokenreq_recorder: Recorder
) -> None:
    sign_in(page, archiva, "bob")
    page.goto(f"{archiva}/projects/p2")
    expect(page.get_by_role("alert")).to_have_text("Error 40300: Not allowed to use this project")
    expect(page.locator("#events li")).to_have_count(0)
    assert tokenreq_recorder.token_requests == []
