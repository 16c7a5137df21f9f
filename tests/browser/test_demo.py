"""The demo page (examples/demo.py) in Debian's Chromium, driven by Playwright.

Each test serves the demo in a thread on loopback, signs in through the page
and checks what a user sees. Time never decides a test: an expired token comes
from the provider's injected clock, and waiting is Playwright's auto-waiting
``expect``. Each test saves a screenshot of its final state under its tmp dir.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from flask import Flask

from examples import demo

from ..conftest import FakeClock
from ..servers import HitCounter, serve_app
from .conftest import PageErrors, watched_page

with contextlib.suppress(ImportError):  # without Playwright, `browser` skips
    from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.browser

TOKEN_PATH = "/api/tokenreq/token"
#: Dev-free settings shared by every demo app in a test (issuer and provider agree).
SETTINGS = {
    "SECRET_KEY": "browser-test-session-key-0123456789abcdef",
    "TOKENREQ_KEY": "demo.browser:browser-test-secret-0123456789abcdef0123",
    "TOKENREQ_SIGNING_SECRET": "browser-test-signing-secret-0123456789abcdef",
    "TOKENREQ_DEMO_POLL_MS": 0,  # the list refreshes on demand: nothing happens behind a test
}


@pytest.fixture
def page(browser: Browser, page_errors: PageErrors) -> Iterator[Page]:
    with watched_page(browser, page_errors, 1100, 760) as page:
        yield page


@dataclass
class Demo:
    url: str
    app: Flask
    hits: HitCounter
    clock: Any

    @property
    def origin(self) -> str:
        return self.url

    def seed(self, channel: str, data: str, client_id: str = "alice") -> None:
        """Store an event directly, as if someone had published it."""
        self.app.extensions["demo_messages"].add(
            channel,
            [
                {
                    "id": f"seed-{time.monotonic_ns()}:0",
                    "name": "greeting",
                    "client_id": client_id,
                    "encoding": None,
                    "data_text": data,
                    "data_bytes": None,
                    "extras": None,
                    "timestamp": self.clock(),
                }
            ],
        )


def make_app(tmp_path: Path, name: str, clock: Any = None, **overrides: Any) -> Flask:
    kwargs: dict[str, Any] = {"instance_path": tmp_path / name}
    if clock is not None:
        kwargs["now_ms"] = clock
    return demo.create_app({**SETTINGS, **overrides}, **kwargs)


@pytest.fixture
def serve_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Start demo apps on loopback: ``serve_demo(clock=None, **config)``."""
    with ExitStack() as stack:
        started = itertools.count()

        def start(clock: Any = None, **overrides: Any) -> Demo:
            app = make_app(tmp_path, f"instance-{next(started)}", clock, **overrides)
            hits = HitCounter(app)
            url = stack.enter_context(serve_app(app))
            return Demo(url, app, hits, clock or (lambda: int(time.time() * 1000)))

        yield start


def sign_in(page: Page, base_url: str, username: str, query: str = "") -> None:
    page.goto(f"{base_url}/{query}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"{username}-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in-user")).to_have_text(username)


def publish(page: Page, data: str, channel: str = "demo") -> None:
    page.get_by_label("Channel").fill(channel)
    page.get_by_label("Data").fill(data)
    page.get_by_role("button", name="Publish").click()


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file()
    assert path.stat().st_size > 1000
    return path


def assert_clean(errors: PageErrors, *, unauthorized: int = 0) -> None:
    """No uncaught exception; no console error but ``unauthorized`` 401 answers."""
    assert errors.uncaught == []
    expected = ["Failed to load resource: the server responded with a status of 401 (UNAUTHORIZED)"]
    assert errors.console == expected * unauthorized


# -- the tests ---------------------------------------------------------------------


def test_alice_publishes_and_sees_her_event(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    server = serve_demo()
    sign_in(page, server.url, "alice")

    expect(page.get_by_test_id("token-client-id")).to_have_text("alice")
    capability = page.get_by_test_id("token-capability")
    expect(capability).to_contain_text("*: history, publish, subscribe")
    expect(page.get_by_test_id("token-time-left")).to_have_text(re.compile(r"^\d+:\d\d$"))
    expect(page.get_by_test_id("token-count")).to_have_text("1")
    expect(page.get_by_test_id("events-empty")).to_be_visible()

    publish(page, "hello from alice")
    expect(page.get_by_role("status")).to_have_text("Published 'greeting' on channel 'demo'.")
    first = page.get_by_test_id("event").first
    expect(first).to_contain_text("hello from alice")
    expect(first).to_contain_text("from alice")
    expect(page.get_by_role("alert")).to_be_hidden()
    stored = server.app.extensions["demo_messages"].history(
        "demo", start=None, end=None, limit=10, forwards=False
    )
    assert [(m["data"], m["clientId"]) for m in stored] == [("hello from alice", "alice")]
    assert server.hits[TOKEN_PATH] == 1

    screenshot(page, tmp_path, "alice")
    assert_clean(page_errors)


def test_bob_reads_events_and_publishing_is_refused(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    server = serve_demo()
    server.seed("demo", "hello bob")
    sign_in(page, server.url, "bob")

    expect(page.get_by_test_id("token-client-id")).to_have_text("bob")
    capability = page.get_by_test_id("token-capability")
    expect(capability).to_have_text("*: history, subscribe")
    expect(page.get_by_test_id("event")).to_have_count(1)
    expect(page.get_by_test_id("event").first).to_contain_text("hello bob")

    publish(page, "bob was here")
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(
        "Refused: your token does not allow publish on channel 'demo' (40160)"
    )
    expect(page.get_by_test_id("event")).to_have_count(1)  # nothing was stored
    page.get_by_role("button", name="Refresh").click()  # reading still works
    expect(page.get_by_test_id("event")).to_have_count(1)
    expect(alert).to_be_hidden()

    publish(page, "bob was here")  # final state: the refusal on screen
    expect(alert).to_contain_text("(40160)")
    refusal = page.get_by_test_id("log-entry").first  # newest first
    expect(refusal).to_contain_text("POST /provider/channels/demo/messages")
    expect(refusal).to_contain_text("401")
    expect(refusal).to_contain_text("40160 Capability not permitted")
    screenshot(page, tmp_path, "bob-refused")
    assert_clean(page_errors, unauthorized=2)  # the provider's 40160 answers to bob's publishes


def test_the_page_shows_the_token_request_the_exchange_the_claims_and_the_header(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    """What the page shows is what went over the wire, with the MAC and token cut short."""
    server = serve_demo()
    page.goto(f"{server.url}/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-password")
    with (
        page.expect_response(lambda r: r.url.endswith(TOKEN_PATH)) as signed,
        page.expect_response(lambda r: r.url.endswith("/requestToken")) as exchanged,
    ):
        page.get_by_role("button", name="Sign in").click()
    token_request = signed.value.json()
    details = exchanged.value.json()
    expect(page.get_by_test_id("token-count")).to_have_text("1")

    step1 = page.get_by_test_id("tr-fields")
    expect(page.get_by_test_id("tr-call")).to_have_text(f"GET {TOKEN_PATH} → TokenRequest")
    for text in (
        "keyNamedemo.browser",
        "clientIdalice",
        'capability{"*":["history","publish","subscribe"]}',
        "ttl3600000 ms (60 min)",
        f"nonce{token_request['nonce']}",
        f"mac{token_request['mac'][:8]}…",
    ):
        expect(step1).to_contain_text(text)
    expect(page.get_by_test_id("ex-call")).to_have_text(
        "POST /provider/keys/demo.browser/requestToken → TokenDetails"
    )
    expect(page.get_by_test_id("ex-fields")).to_contain_text(f"token{details['token'][:16]}…")
    expect(page.get_by_test_id("ex-fields")).to_contain_text(f"expires{details['expires']} (")

    claims = jwt.decode(details["token"], options={"verify_signature": False})
    expect(page.get_by_test_id("jwt-header")).to_contain_text("alg HS256 · typ at+jwt · kid")
    step3 = page.get_by_test_id("claims")
    for name in ("iss", "clientId", "keyName", "capability"):
        value = claims[name]
        expect(step3).to_contain_text(f"{name}{value}")
    expiry = page.evaluate(f"new Date({claims['exp']} * 1000).toLocaleTimeString()")
    expect(step3).to_contain_text(f"exp{claims['exp']} ({expiry})")
    expires = page.evaluate(f"new Date({details['expires']}).toLocaleTimeString()")
    expect(page.get_by_test_id("token-expires")).to_have_text(expires)

    bearer = base64.b64encode(details["token"].encode()).decode()  # after the event list loaded
    expect(page.get_by_test_id("auth-header")).to_have_text(f"Authorization: Bearer {bearer[:20]}…")
    expect(page.get_by_test_id("auth-header-plain")).to_contain_text(
        f"base64 of {details['token'][:20]}…"
    )
    log = page.get_by_test_id("log-entry")
    expect(log).to_have_count(3)
    expect(log.nth(2)).to_contain_text(f"GET {TOKEN_PATH}200")
    expect(log.nth(1)).to_contain_text("POST /provider/keys/demo.browser/requestToken200")
    expect(log.nth(0)).to_contain_text("GET /provider/channels/demo/messages200")

    html = page.content()  # the full MAC and token are never on the page
    assert token_request["mac"] not in html
    assert details["token"] not in html
    assert bearer not in html
    screenshot(page, tmp_path, "flow")
    assert_clean(page_errors)


def test_when_the_session_ends_elsewhere_the_page_says_so(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    """Signed out in another tab (the server ends the session): the next token request
    gets 401 from the issuer, and the page stops claiming anyone is signed in."""
    server = serve_demo()
    sign_in(page, server.url, "alice")
    expect(page.get_by_test_id("token-count")).to_have_text("1")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "session"]
    elsewhere = requests.post(
        f"{server.url}/logout",
        cookies={"session": cookie["value"]},
        allow_redirects=False,
        timeout=10,
    )
    assert elsewhere.status_code == 303  # the browser keeps its (now dead) cookie

    page.get_by_role("button", name="Get a new token").click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("Your session has ended: the issuer answered 40100. Sign in again.")
    expect(page.get_by_test_id("signed-in-user")).to_be_hidden()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    expect(page.get_by_test_id("session-ended")).to_contain_text("Session ended")
    expect(page.get_by_role("button", name="Publish")).to_be_disabled()
    expect(page.get_by_role("button", name="Get a new token")).to_be_disabled()
    expect(page.get_by_test_id("token-time-left")).to_have_text("no new tokens without a session")
    expect(page.get_by_test_id("log-entry").first).to_contain_text(
        f"GET {TOKEN_PATH}40140100 Login required"
    )
    screenshot(page, tmp_path, "session-ended")
    assert_clean(page_errors, unauthorized=1)  # the issuer's 401

    page.get_by_role("link", name="Sign in again").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_test_id("signed-in-user")).to_have_count(0)


def test_wrong_password_and_sign_out(
    page: Page, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    server = serve_demo()
    page.goto(f"{server.url}/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    assert server.hits[TOKEN_PATH] == 0

    sign_in(page, server.url, "bob")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_test_id("signed-in-user")).to_have_count(0)
    screenshot(page, tmp_path, "signed-out")


def test_expired_token_is_renewed_once_and_the_publish_succeeds(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    """The provider's clock passes the token's expiry: it answers 40142, and
    tokenreq.js fetches one new token and retries."""
    clock = FakeClock(start=int(time.time() * 1000))
    server = serve_demo(clock=clock)
    sign_in(page, server.url, "alice", query="?ttl=60000")
    expect(page.get_by_test_id("token-count")).to_have_text("1")
    assert server.hits[TOKEN_PATH] == 1

    clock.advance(60_000 + 10_000)  # past expiry plus the provider's 5 s leeway
    publish(page, "after expiry")
    expect(page.get_by_role("status")).to_have_text("Published 'greeting' on channel 'demo'.")
    expect(page.get_by_test_id("token-count")).to_have_text("2")
    expect(page.get_by_test_id("event").first).to_contain_text("after expiry")
    assert server.hits[TOKEN_PATH] == 2
    assert server.hits["/provider/keys/demo.browser/requestToken"] == 2
    expect(page.get_by_role("alert")).to_be_hidden()

    screenshot(page, tmp_path, "renewed-after-expiry")
    assert_clean(page_errors, unauthorized=1)  # the provider's 40142 for the expired token


def test_short_ttl_token_is_renewed_before_it_expires(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    """With a 3 s token the page renews by itself (a third of the lifetime early)."""
    server = serve_demo(TOKENREQ_MIN_TTL=1000)  # below the default 10 s floor
    sign_in(page, server.url, "alice", query="?ttl=3000")
    expect(page.get_by_test_id("token-count")).to_have_text("1")
    expect(page.get_by_test_id("token-count")).not_to_have_text("1", timeout=10_000)
    assert server.hits[TOKEN_PATH] >= 2

    publish(page, "with a renewed token")
    expect(page.get_by_test_id("event").first).to_contain_text("with a renewed token")
    screenshot(page, tmp_path, "short-ttl")
    assert_clean(page_errors)


@pytest.mark.parametrize("allowed", [True, False], ids=["allow-listed", "not-allow-listed"])
def test_cross_origin_provider(
    page: Page,
    page_errors: PageErrors,
    tmp_path: Path,
    serve_demo: Callable[..., Demo],
    allowed: bool,
) -> None:
    """Page and issuer on http://127.0.0.1:A, provider on http://localhost:B."""
    page_app: dict[str, Flask] = {}

    def deferred(environ: Any, start_response: Any) -> Any:
        return page_app["app"](environ, start_response)

    with serve_app(deferred) as page_url:  # the page's origin is known before its app
        origins = [page_url] if allowed else []
        provider = serve_demo(TOKENREQ_PROVIDER_CORS_ORIGINS=origins)
        provider_url = provider.url.replace("127.0.0.1", "localhost") + "/provider"
        app = make_app(tmp_path, "page-origin", TOKENREQ_DEMO_PROVIDER_URL=provider_url)
        hits = HitCounter(app)
        page_app["app"] = app

        sign_in(page, page_url, "alice")
        if allowed:
            expect(page.get_by_test_id("token-client-id")).to_have_text("alice")
            publish(page, "across origins")
            expect(page.get_by_test_id("event").first).to_contain_text("across origins")
            stored = provider.app.extensions["demo_messages"].history(
                "demo", start=None, end=None, limit=10, forwards=False
            )
            assert [m["data"] for m in stored] == ["across origins"]
            assert (
                app.extensions["demo_messages"].history(
                    "demo", start=None, end=None, limit=10, forwards=False
                )
                == []
            )
            screenshot(page, tmp_path, "cross-origin-allowed")
            assert_clean(page_errors)
        else:
            alert = page.get_by_role("alert")
            expect(alert).to_contain_text(f"Could not reach the provider at {provider_url}")
            expect(alert).to_contain_text("TOKENREQ_PROVIDER_CORS_ORIGINS")
            expect(page.get_by_test_id("token-count")).to_have_text("0")
            screenshot(page, tmp_path, "cross-origin-refused")
            assert page_errors.uncaught == []
            assert any("CORS" in text for text in page_errors.console)
        assert hits[TOKEN_PATH] == 1  # the issuer stays on the page's origin


TOKENREQ_JS_CHECKS = """
async ({ providerUrl }) => {
  const { createTokenClient, TokenError } = await import('/api/tokenreq/tokenreq.js');
  const authUrl = '/api/tokenreq/token';
  const viaAbly = (client) => new Promise((resolve) => {
    client.ablyAuthCallback()({}, (err, result) => resolve({ err, result }));
  });

  const tokens = createTokenClient({ authUrl, providerUrl });
  const [a, b] = await Promise.all([tokens.getToken(), tokens.getToken()]);  // one request
  const cached = await tokens.getToken();                                    // no request
  const left = tokens.timeLeft();
  const fromAbly = await viaAbly(tokens);                                    // a new token
  const signedOnly = await viaAbly(createTokenClient({ authUrl }));          // a TokenRequest
  const narrowed = createTokenClient({ authUrl, providerUrl, authParams: { ttl: 99999999 } });
  const refused = await narrowed.getToken().catch((err) => err);
  return {
    same: a === b && b === cached,
    clientId: a.clientId,
    left,
    ablyToken: fromAbly.err === null && fromAbly.result.token !== a.token,
    ablyClientId: fromAbly.result.clientId,
    tokenRequestKeys: Object.keys(signedOnly.result).sort(),
    refused: [refused instanceof TokenError, refused.code, refused.statusCode],
  };
}
"""


def test_tokenreq_js_api(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo]
) -> None:
    """getToken (shared, cached), timeLeft, ablyAuthCallback and errors, in the browser."""
    server = serve_demo()
    sign_in(page, server.url, "alice")
    expect(page.get_by_test_id("token-count")).to_have_text("1")
    before = server.hits[TOKEN_PATH]

    result = page.evaluate(TOKENREQ_JS_CHECKS, {"providerUrl": "/provider"})

    assert result["same"] is True
    assert result["clientId"] == "alice"
    assert 3_590_000 < result["left"] <= 3_600_000
    assert result["ablyToken"] is True
    assert result["ablyClientId"] == "alice"
    assert result["tokenRequestKeys"] == [
        "capability",
        "clientId",
        "keyName",
        "mac",
        "nonce",
        "timestamp",
        "ttl",
    ]
    assert result["refused"] == [True, 40003, 400]
    # getToken x3 (one request), ablyAuthCallback x2, the refused one: 4 requests.
    assert server.hits[TOKEN_PATH] - before == 4
    assert page_errors.uncaught == []


JWT_SKEW_CHECKS = """
async ({ issuerNow, skew, accept }) => {
  const { createTokenClient } = await import('/api/tokenreq/tokenreq.js');
  const types = [];
  const fetchVia = async (url, init) => {
    const headers = new Headers(init.headers);
    if (accept) headers.set('Accept', accept);
    const response = await fetch(url, { ...init, headers });
    types.push(response.headers.get('content-type'));
    return response;
  };
  const tokens = createTokenClient({
    authUrl: '/api/tokenreq/token',
    authParams: { format: 'jwt', ttl: 60000 },
    fetch: fetchVia,
    now: () => issuerNow + skew,  // the browser's clock, off by `skew`, standing still
  });
  const first = await tokens.getToken();
  const left = tokens.timeLeft();
  const again = [];
  for (let i = 0; i < 5; i += 1) again.push(await tokens.getToken());
  return { left, types, cached: again.every((details) => details === first) };
}
"""


@pytest.mark.parametrize("skew", [300_000, -300_000], ids=["ahead", "behind"])
@pytest.mark.parametrize(
    ("accept", "answer"),
    [(None, "application/json"), ("application/jwt", "application/jwt")],
    ids=["token-details", "bare-jwt"],
)
def test_a_jwt_lasts_its_lifetime_whatever_the_browsers_clock(
    page: Page,
    page_errors: PageErrors,
    serve_demo: Callable[..., Demo],
    skew: int,
    accept: str | None,
    answer: str,
) -> None:
    """``authParams: {format: 'jwt'}`` with a browser clock 5 minutes off: the token
    lives exp - iat from its arrival. The helper asks for TokenDetails; an authUrl that
    answers only a bare JWT (``accept``) is timed by its iat and exp claims."""
    clock = FakeClock(start=int(time.time()) * 1000)
    server = serve_demo(clock=clock)
    sign_in(page, server.url, "alice")

    result = page.evaluate(JWT_SKEW_CHECKS, {"issuerNow": clock(), "skew": skew, "accept": accept})

    assert result["types"] == [answer]
    assert result["left"] == 60_000
    assert result["cached"] is True  # not fetched again and again
    assert page_errors.uncaught == []


RENEWAL_RETRY_CHECKS = """
async () => {
  const { createTokenClient } = await import('/api/tokenreq/tokenreq.js');
  let now = 1_000_000;  // the page's clock: moved by the timers below, never by waiting
  const timers = new Map();
  let nextId = 1;
  const pending = () => [...timers.values()].map((timer) => timer.delay);
  let down = false;
  const fetchVia = (url, init) => {
    if (down && String(url).includes('/api/tokenreq/token')) {
      return Promise.reject(new TypeError('Failed to fetch'));
    }
    return fetch(url, init);
  };
  let settled = null;
  const errors = [];
  let renewed = 0;
  const tokens = createTokenClient({
    authUrl: '/api/tokenreq/token',
    providerUrl: '/provider',
    authParams: { ttl: 60000 },
    autoRenew: true,
    fetch: fetchVia,
    now: () => now,
    setTimeout: (fn, delay) => {
      timers.set(nextId, { fn, delay });
      return nextId++;
    },
    clearTimeout: (id) => timers.delete(id),
    onToken: () => { renewed += 1; if (settled) settled(); },
    onError: (err) => { errors.push(err.code); if (settled) settled(); },
  });
  /** Run the one pending timer at its time; wait for that renewal to succeed or fail. */
  const fire = async () => {
    if (timers.size !== 1) throw new Error(`${timers.size} timers pending`);
    const [[id, { fn, delay }]] = [...timers.entries()];
    timers.delete(id);
    now += delay;
    const done = new Promise((resolve) => { settled = resolve; });
    fn();
    await done;
    return delay;
  };

  await tokens.getToken();
  const delays = [];
  down = true;  // the renewal and the next six tries fail
  for (let i = 0; i < 7; i += 1) delays.push(await fire());
  down = false;
  delays.push(await fire());
  const afterSuccess = pending();
  down = true;
  delays.push(await fire());
  const afterFailure = pending();
  tokens.close();
  return { delays, errors, renewed, afterSuccess, afterFailure, afterClose: pending() };
}
"""


def test_auto_renew_retries_a_failed_renewal_with_backoff_until_close(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo]
) -> None:
    """A failed background renewal (a network blip) is tried again 1 s later, then 2, 4,
    ... up to 30 s apart; a success goes back to the normal schedule; close() ends it.
    The helper's timers and clock are injected: the test runs them, nothing waits."""
    server = serve_demo()
    sign_in(page, server.url, "alice")
    expect(page.get_by_test_id("token-count")).to_have_text("1")  # the page's own token
    before = server.hits[TOKEN_PATH]

    result = page.evaluate(RENEWAL_RETRY_CHECKS)

    # 45 s: a 60 s token renews 15 s early; then the retries; the last one succeeds.
    assert result["delays"] == [45_000, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 45_000]
    assert result["errors"] == [40170] * 8  # onError for each failure (network: 40170)
    assert result["renewed"] == 2  # the first token and the renewal that worked
    assert result["afterSuccess"] == [45_000]  # the next renewal, on time
    assert result["afterFailure"] == [1000]  # the backoff started over
    assert result["afterClose"] == []
    assert server.hits[TOKEN_PATH] - before == 2
    assert page_errors.uncaught == []
