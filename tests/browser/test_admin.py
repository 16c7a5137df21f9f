"""The key-management page (KeyAdmin) in Debian's Chromium, driven by Playwright.

Each test serves a real app on loopback: a TokenProvider with managed keys in
SQLite (and one static key from the configuration) and a KeyAdmin at
``/tokenreq/admin``. Tickets come from ``KeyAdmin.issue_ticket`` as the app's
own views would make them. What a change does is checked at the provider: a
real TokenRequest exchange over HTTP with the old, new or revoked key.

Wacht's checklist and the page's safeguards, one test each. Time never decides
a test: tickets and sessions expire by moving ``tokenreq_clock``; a request
"in flight" is one the server holds until the test lets it go.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from flask import Flask, request
from werkzeug.serving import BaseWSGIServer, make_server

from flask_tokenreq import TokenProvider, sign_token_request
from flask_tokenreq.keys.secret import check_secret_format, hint
from flask_tokenreq.testing import ManualClock

from ..servers import HitCounter
from .conftest import PageErrors, watched_page

with contextlib.suppress(ImportError):  # without Playwright, `browser` skips
    from playwright.sync_api import Browser, Locator, Page, expect

pytestmark = pytest.mark.browser

PREFIX = "/tokenreq/admin"
KEYS_API = f"{PREFIX}/api/keys"
STATIC_KEY = "conf.static01:static-secret-0123456789abcdef0123456789ab"
SETTINGS = {
    "SECRET_KEY": "admin-browser-session-key-0123456789abcdef",
    "TOKENREQ_SIGNING_SECRET": "admin-browser-signing-secret-0123456789abcdef",
    "TOKENREQ_PROVIDER_KEYS": [STATIC_KEY],
}
#: Requests the page makes that answer 401/403 on purpose show up as console errors.
REFUSED = re.compile(r"status of (401|403) ")


@pytest.fixture
def page(browser: Browser, page_errors: PageErrors) -> Iterator[Page]:
    with watched_page(browser, page_errors, 1280, 860) as page:
        yield page


# -- the app under test -------------------------------------------------------------------------


class Hold:
    """Holds matching requests at the server until :meth:`release` (a request in flight)."""

    def __init__(self) -> None:
        self.method = ""
        self.path = re.compile("$^")
        self.arrived = threading.Semaphore(0)
        self._go = threading.Event()

    def arm(self, method: str, path: str) -> None:
        self.method, self.path = method, re.compile(path)
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    def before_request(self) -> None:
        if request.method == self.method and self.path.fullmatch(request.path):
            self.arrived.release()
            assert self._go.wait(timeout=30), "a held request was never released"


class Restartable:
    """A werkzeug server on a fixed loopback port that a test can stop and start again."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server: BaseWSGIServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.port = server.server_port
        self.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            assert self.thread is not None
            self.thread.join(timeout=5)
            self.server = None


@dataclass
class Admin:
    """A served app with a KeyAdmin: its URL, the app, request counts and a hold."""

    server: Restartable
    app: Flask
    hits: HitCounter
    hold: Hold
    clock: ManualClock
    pages: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def ticket(
        self, actor: str = "carol", scopes: tuple[str, ...] = ("keys:read", "keys:write")
    ) -> str:
        with self.app.app_context():
            ticket: str = self.app.extensions["tokenreq_admin"].issue_ticket(actor, scopes)
        return ticket

    def page_url(self, ticket: str | None = None) -> str:
        if ticket is None:
            return f"{self.url}{PREFIX}/"
        return f"{self.url}{PREFIX}/?ticket={ticket}"

    def create_key(self, name: str, **kwargs: Any) -> str:
        """A managed key made on the server (as the CLI would); the full key."""
        with self.app.app_context():
            _, full = self.keys().for_change().create(name, actor="test", **kwargs)
        return full

    def keys(self) -> Any:
        return self.app.extensions["tokenreq_provider"].keys

    def key_infos(self) -> list[Any]:
        with self.app.app_context():
            return list(self.keys().for_change().list("all"))

    def exchange(self, full_key: str) -> int:
        """A real TokenRequest exchange at the provider: 200, or the Ably error code."""
        treq = sign_token_request(full_key)
        response = requests.post(
            f"{self.url}/keys/{treq.key_name}/requestToken", json=treq.to_dict(), timeout=10
        )
        if response.status_code == 200:
            return 200
        return int(response.json()["error"]["code"])

    def audit(self, event: str) -> list[Any]:
        with self.app.app_context():
            log = self.app.extensions["tokenreq_provider"]._state().audit
            log.flush()
            return list(log.query(event=event))


@pytest.fixture
def admin(tmp_path: Path, tokenreq_clock: ManualClock) -> Iterator[Admin]:
    from flask_tokenreq.admin import KeyAdmin

    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SETTINGS,
        TOKENREQ_KEY_ENCRYPTION_KEYS=[Fernet.generate_key().decode()],
        TOKENREQ_DATABASE_URL=f"sqlite:///{tmp_path / 'keys.sqlite3'}",
    )
    hits = HitCounter(app)
    hold = Hold()
    app.before_request(hold.before_request)
    provider = TokenProvider(app)
    KeyAdmin(app)
    server = Restartable(app)
    try:
        yield Admin(server, app, hits, hold, tokenreq_clock)
    finally:
        hold.release()
        server.stop()
        provider.close()


def open_page(page: Page, admin: Admin, **ticket_args: Any) -> None:
    """Open the page with a fresh ticket and wait for the key list."""
    page.goto(admin.page_url(admin.ticket(**ticket_args)))
    expect(page.get_by_test_id("app")).to_be_visible()
    expect(page.get_by_test_id("actor")).to_have_text(ticket_args.get("actor", "carol"))
    expect(page.get_by_test_id("keys-table")).to_have_attribute("aria-busy", "false")
    expect(page.get_by_test_id("key-row").first).to_be_visible()


def row(page: Page, name: str) -> Any:
    return page.get_by_test_id("key-row").filter(has=page.get_by_role("rowheader", name=name))


def assert_no_secret(page: Page, secret: str) -> None:
    """Not in the markup, the text, any form control's value, nor the URL."""
    assert secret not in page.content()
    assert secret not in page.evaluate("document.body.innerText")
    values = page.evaluate(
        "[...document.querySelectorAll('input, textarea, select')].map((e) => e.value)"
    )
    assert all(secret not in value for value in values)
    assert secret not in page.url


def assert_clean(errors: PageErrors, refused: int = 0) -> None:
    """No uncaught exception; console errors only for ``refused`` 401/403 answers (no CSP)."""
    assert errors.uncaught == []
    assert [text for text in errors.console if not REFUSED.search(text)] == []
    assert len(errors.console) == refused


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000


def open_create_dialog(page: Page, name: str) -> Locator:
    """Open the Create key dialog and type ``name``; the dialog (not yet submitted)."""
    page.get_by_role("button", name="Create key", exact=True).click()
    dialog = page.get_by_role("dialog", name="Create key")
    dialog.get_by_label("Name").fill(name)
    return dialog


def create_through_page(page: Page, name: str) -> str:
    """Create a key with the dialog; returns the secret from the modal (still open)."""
    dialog = open_create_dialog(page, name)
    dialog.get_by_role("button", name="Create", exact=True).click()
    secret_dialog = page.get_by_role("dialog", name="Copy your new key")
    expect(secret_dialog).to_be_visible()
    return page.get_by_test_id("secret-value").inner_text()


def close_secret(page: Page) -> None:
    page.get_by_label("I have copied this secret").check()
    page.get_by_role("button", name="Done").click()
    assert page.get_by_test_id("secret-value").count() == 0  # gone as the dialog closes
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_hidden()


# -- access: tickets and the gate ---------------------------------------------------------------


def test_without_a_ticket_the_page_blocks(
    page: Page, page_errors: PageErrors, admin: Admin, tmp_path: Path
) -> None:
    admin.create_key("Production")
    page.goto(admin.page_url())
    gate = page.get_by_test_id("gate")
    expect(gate).to_be_visible()
    expect(page.get_by_role("heading", name="This page needs a fresh link")).to_be_visible()
    expect(page.get_by_test_id("gate-reason")).to_have_text(
        "You have no key-management session in this browser."
    )
    expect(gate).to_contain_text("Ask the app for a new link")
    expect(page.get_by_test_id("app")).to_be_hidden()
    expect(page.get_by_role("button", name="Create key")).to_be_hidden()
    assert admin.hits[KEYS_API] == 0  # the page asked nothing of the key API
    screenshot(page, tmp_path, "gate")
    assert_clean(page_errors, refused=1)  # GET api/session: 401


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("expired", "This link cannot be used. Ticket expired:"),
        ("reused", "This link cannot be used. Ticket already used:"),
        ("forged", "This link cannot be used. Ticket invalid:"),
    ],
)
def test_a_ticket_that_cannot_be_used_blocks_with_its_reason(
    browser: Browser, page: Page, page_errors: PageErrors, admin: Admin, how: str, reason: str
) -> None:
    ticket = admin.ticket()
    if how == "expired":
        admin.clock.advance(60_001)  # the default ttl is 60 s
    elif how == "reused":
        other = browser.new_context()
        first = other.new_page()
        first.goto(admin.page_url(ticket))
        expect(first.get_by_test_id("key-row").first).to_be_visible()  # used once, elsewhere
        expect(first.get_by_test_id("audit-row").first).to_be_visible()
        other.close()
    else:
        ticket = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
    listed = admin.hits[KEYS_API]

    page.goto(admin.page_url(ticket))
    expect(page.get_by_test_id("gate")).to_be_visible()
    expect(page.get_by_test_id("gate-reason")).to_contain_text(reason)
    expect(page.get_by_test_id("app")).to_be_hidden()
    assert "ticket=" not in page.url
    assert [c for c in page.context.cookies() if c["name"] == "tokenreq_admin"] == []
    assert admin.hits[KEYS_API] == listed
    refusals = admin.audit("ticket.refused")
    assert refusals, "the refusal is audited"
    assert_clean(page_errors, refused=1)


def test_the_ticket_leaves_the_url_and_the_session_survives_a_reload(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    ticket = admin.ticket()
    page.goto(admin.page_url(ticket))
    expect(page.get_by_test_id("app")).to_be_visible()
    assert page.url == f"{admin.url}{PREFIX}/"
    assert ticket not in page.evaluate("location.href")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tokenreq_admin")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == PREFIX
    assert ticket not in page.content()

    page.go_back()  # the entry was replaced, not pushed: no ticket in the history either
    assert page.url == "about:blank"
    page.go_forward()
    assert page.url == f"{admin.url}{PREFIX}/"
    expect(page.get_by_test_id("app")).to_be_visible()

    page.reload()  # no ticket now: the session cookie carries on
    expect(page.get_by_test_id("app")).to_be_visible()
    expect(page.get_by_test_id("actor")).to_have_text("carol")
    expect(page.get_by_test_id("access")).to_have_text("Can manage keys")
    assert len(admin.audit("ticket.exchanged")) == 1
    assert_clean(page_errors)


def test_an_ended_session_sends_the_user_back_to_the_gate(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    admin.create_key("Production")
    open_page(page, admin)
    admin.clock.advance(15 * 60_000 + 1)  # the session lasts 15 minutes
    page.get_by_role("button", name="Refresh", exact=True).click()
    expect(page.get_by_test_id("gate")).to_be_visible()
    reason = page.get_by_test_id("gate-reason")
    expect(reason).to_contain_text("Your session has ended.")
    expect(reason).to_contain_text("Key-management session expired")
    expect(page.get_by_test_id("app")).to_be_hidden()
    expect(page.get_by_role("button", name="Create key")).to_be_hidden()
    assert page_errors.uncaught == []


# -- the list -----------------------------------------------------------------------------------


def test_the_list_shows_keys_without_secrets_and_filters_by_status(
    page: Page, page_errors: PageErrors, admin: Admin, tmp_path: Path
) -> None:
    production = admin.create_key("Production")
    retired = admin.create_key("Retired")
    with admin.app.app_context():
        admin.keys().for_change().revoke(retired.partition(":")[0], "service retired", actor="t")
    open_page(page, admin)

    rows = page.get_by_test_id("key-row")
    expect(rows).to_have_count(3)  # the static key, Production, Retired
    headers = page.locator("thead").first.get_by_role("columnheader")
    expect(headers).to_have_text(
        ["Name", "Key", "Status", "Created", "Expires", "Last used", "Actions"]
    )
    key_name, _, secret = production.partition(":")
    prod = row(page, "Production")
    expect(prod).to_contain_text(f"{key_name}:{hint(secret)}")
    expect(prod.get_by_test_id("key-status")).to_have_text("Active")
    expect(prod).to_contain_text("Never")  # expires, last used
    expect(row(page, "Retired").get_by_test_id("key-status")).to_have_text("Revoked")
    expect(row(page, "Retired")).to_contain_text("service retired")
    expect(row(page, "Retired").get_by_role("button")).to_have_count(0)

    static = page.get_by_test_id("key-row").filter(has_text="from configuration")
    expect(static).to_contain_text(STATIC_KEY.partition(":")[0])
    expect(static.get_by_role("button")).to_have_count(0)  # static keys change in config only

    page.get_by_label("Status").select_option("revoked")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Retired")
    page.get_by_label("Status").select_option("active")
    expect(rows).to_have_count(2)
    page.get_by_label("Status").select_option("expired")
    expect(rows).to_have_count(0)
    expect(page.get_by_test_id("keys-empty")).to_have_text("No expired keys.")

    assert_no_secret(page, secret)
    assert_no_secret(page, STATIC_KEY.partition(":")[2])
    screenshot(page, tmp_path, "list")
    assert_clean(page_errors)


def test_every_field_has_a_label_and_the_dialogs_are_dialogs(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    open_page(page, admin)
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
            .filter((e) => e.labels.length === 0).map((e) => e.id)"""
    )
    assert unlabelled == []
    dialogs = page.evaluate("[...document.querySelectorAll('dialog')].map((d) => d.id)")
    assert dialogs == ["create-dialog", "rotate-dialog", "revoke-dialog", "secret-dialog"]
    assert page.evaluate("document.querySelectorAll('[style], script:not([src])').length") == 0
    assert page.evaluate("document.compatMode") == "CSS1Compat"  # standards mode
    assert_clean(page_errors)


# -- create, and the secret modal (safeguard 3) -------------------------------------------------


def test_create_shows_the_secret_once_and_it_leaves_the_dom(
    page: Page, page_errors: PageErrors, admin: Admin, tmp_path: Path
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_page(page, admin)
    secret = create_through_page(page, "Analytics worker")
    dialog = page.get_by_role("dialog", name="Copy your new key")
    key_name = secret.partition(":")[0]
    assert check_secret_format(secret.partition(":")[2])  # a whole key, checksum and all
    expect(dialog).to_contain_text("This is the only time the full key is shown")
    expect(page.get_by_test_id("notice")).to_have_text("Key “Analytics worker” created.")
    expect(row(page, "Analytics worker")).to_be_visible()  # the list was refetched behind it
    assert admin.exchange(secret) == 200  # the key works at the provider

    done = page.get_by_role("button", name="Done")
    expect(done).to_be_disabled()
    page.keyboard.press("Escape")  # Escape does not close it either
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("copy-status")).to_contain_text("Tick “I have copied this secret”")

    dialog.get_by_role("button", name="Copy").click()
    expect(page.get_by_test_id("copy-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, tmp_path, "secret")

    page.get_by_label("I have copied this secret").check()
    expect(done).to_be_enabled()
    page.get_by_label("I have copied this secret").uncheck()
    expect(done).to_be_disabled()
    page.get_by_label("I have copied this secret").check()
    done.click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("secret-value")).to_have_count(0)
    assert_no_secret(page, secret)
    assert_no_secret(page, secret.partition(":")[2])
    expect(row(page, "Analytics worker")).to_contain_text(key_name)

    [created] = admin.audit("key.created")
    assert created.actor == "admin:carol"
    expect(page.get_by_test_id("audit-row").first).to_contain_text("Key created")
    assert_clean(page_errors)


def test_create_by_keyboard_only(page: Page, page_errors: PageErrors, admin: Admin) -> None:
    open_page(page, admin)
    page.get_by_role("button", name="Create key", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Name")).to_be_focused()
    page.keyboard.type("Typed by keyboard")
    page.keyboard.press("Enter")  # submits the form
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_visible()
    expect(page.get_by_role("button", name="Copy")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("I have copied this secret")).to_be_focused()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Done")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_hidden()
    expect(row(page, "Typed by keyboard")).to_be_visible()

    page.keyboard.press("Escape")  # nothing open: nothing happens
    row(page, "Typed by keyboard").get_by_role("button", name="Revoke").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Reason")).to_be_focused()
    page.keyboard.press("Escape")  # cancels the revoke
    expect(page.get_by_role("dialog", name=re.compile("^Revoke"))).to_be_hidden()
    assert [i.status for i in admin.key_infos()] == ["active"]
    assert_clean(page_errors)


def test_a_refused_create_says_why_and_changes_nothing(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    open_page(page, admin)
    dialog = open_create_dialog(page, "Bad capability")
    dialog.get_by_label("Capability").fill("{not json")
    dialog.get_by_role("button", name="Create", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text("The capability must be JSON")
    assert admin.hits[KEYS_API] == 1  # only the list: nothing was sent

    # JSON, but it grants nothing: refused by the server.
    dialog.get_by_label("Capability").fill('{"chat": []}')
    dialog.get_by_role("button", name="Create", exact=True).click()
    alert = dialog.get_by_role("alert")
    expect(alert).to_contain_text("Refused:")
    expect(alert).to_contain_text("(400")  # the message and code of the API's answer
    expect(dialog.get_by_role("button", name="Retry")).to_be_hidden()  # fix it, not retry it
    expect(dialog).to_be_visible()
    assert admin.key_infos() == []
    assert page_errors.uncaught == []


# -- rotate (safeguard 2; checklist: the old secret is refused) ---------------------------------


def test_rotate_warns_returns_a_new_secret_and_the_old_one_is_refused(
    page: Page, page_errors: PageErrors, admin: Admin, tmp_path: Path
) -> None:
    old = admin.create_key("Production")
    assert admin.exchange(old) == 200
    open_page(page, admin)

    row(page, "Production").get_by_role("button", name="Rotate").click()
    dialog = page.get_by_role("dialog", name="Rotate “Production”?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Rotating makes a new secret for this key")
    expect(dialog).to_contain_text("requests signed with the old secret are refused")
    grace = dialog.get_by_label("Grace period for the current secret")
    expect(grace).to_have_value("0")
    dialog.get_by_role("button", name="Cancel").click()  # cancelling changes nothing
    expect(dialog).to_be_hidden()
    assert admin.exchange(old) == 200
    assert admin.hits[f"{KEYS_API}/{old.partition(':')[0]}/rotate"] == 0

    row(page, "Production").get_by_role("button", name="Rotate").click()
    screenshot(page, tmp_path, "rotate-dialog")
    dialog.get_by_role("button", name="Rotate key").click()
    secret_dialog = page.get_by_role("dialog", name="Copy your new key")
    expect(secret_dialog).to_contain_text("New secret for “Production”")
    new = page.get_by_test_id("secret-value").inner_text()
    assert new != old
    assert new.partition(":")[0] == old.partition(":")[0]  # the same key name
    expect(page.get_by_test_id("notice")).to_contain_text("the previous secret no longer works")

    assert admin.exchange(old) == 40101  # the provider refuses the old secret at once
    assert admin.exchange(new) == 200
    close_secret(page)
    assert_no_secret(page, new)
    [rotated] = admin.audit("key.rotated")
    assert rotated.actor == "admin:carol"
    assert_clean(page_errors)


def test_rotate_with_a_grace_period_keeps_the_old_secret_until_it_ends(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    old = admin.create_key("Mobile app")
    open_page(page, admin)
    row(page, "Mobile app").get_by_role("button", name="Rotate").click()
    dialog = page.get_by_role("dialog", name="Rotate “Mobile app”?")
    dialog.get_by_label("Grace period for the current secret").select_option(label="1 hour")
    dialog.get_by_role("button", name="Rotate key").click()
    new = page.get_by_test_id("secret-value").inner_text()
    expect(page.get_by_test_id("notice")).to_contain_text("keeps working for 1 hour")
    page.get_by_label("I have copied this secret").check()
    page.keyboard.press("Escape")  # once ticked, Escape closes it too, and the secret goes
    assert page.get_by_test_id("secret-value").count() == 0
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_hidden()
    assert_no_secret(page, new)

    assert admin.exchange(old) == 200  # in grace
    assert admin.exchange(new) == 200
    admin.clock.advance(3_600_000 + 1)
    assert admin.exchange(old) == 40101
    assert admin.exchange(new) == 200
    assert_clean(page_errors)


# -- revoke (safeguard 1; checklist: refused at once) -------------------------------------------


def test_revoke_asks_for_a_reason_and_the_key_is_refused_at_once(
    page: Page, page_errors: PageErrors, admin: Admin, tmp_path: Path
) -> None:
    full = admin.create_key("Laptop")
    key_name = full.partition(":")[0]
    assert admin.exchange(full) == 200
    open_page(page, admin)

    row(page, "Laptop").get_by_role("button", name="Revoke").click()
    dialog = page.get_by_role("dialog", name="Revoke “Laptop”?")
    expect(dialog).to_contain_text("This cannot be undone")
    reason = dialog.get_by_label("Reason")
    expect(reason).to_be_focused()
    dialog.get_by_role("button", name="Revoke key").click()  # no reason: refused in the page
    expect(dialog).to_be_visible()
    assert reason.evaluate("(e) => e.validity.valueMissing") is True
    reason.fill("   ")
    dialog.get_by_role("button", name="Revoke key").click()
    expect(dialog.get_by_role("alert")).to_have_text("Give a reason for the audit log.")
    assert admin.hits[f"{KEYS_API}/{key_name}/revoke"] == 0
    assert admin.exchange(full) == 200

    reason.fill("laptop lost")
    expect(dialog.get_by_role("alert")).to_have_count(0)  # editing puts the error away
    screenshot(page, tmp_path, "revoke-dialog")
    dialog.get_by_role("button", name="Revoke key").click()
    expect(dialog).to_be_hidden()
    laptop = row(page, "Laptop")
    expect(laptop.get_by_test_id("key-status")).to_have_text("Revoked")
    expect(laptop).to_contain_text("laptop lost")
    expect(laptop.get_by_role("button")).to_have_count(0)
    expect(page.get_by_test_id("notice")).to_have_text(
        "Key “Laptop” revoked: it is refused from now on."
    )
    assert admin.exchange(full) == 40131  # the provider refuses the key at once

    [revoked] = admin.audit("key.revoked")
    assert revoked.actor == "admin:carol"
    assert revoked.detail is not None
    assert revoked.detail.get("reason") == "laptop lost"
    first = page.get_by_test_id("audit-row").first
    expect(first).to_contain_text("Key revoked")
    expect(first).to_contain_text("laptop lost")
    assert admin.hits[f"{KEYS_API}/{key_name}/revoke"] == 1
    assert_clean(page_errors)


# -- errors with a retry (safeguard 4) ----------------------------------------------------------


def test_errors_are_shown_with_a_retry_that_works(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    admin.create_key("Production")
    open_page(page, admin)

    admin.server.stop()  # the server is really gone
    page.get_by_label("Status").select_option("active")
    error = page.get_by_test_id("error")
    expect(error.get_by_role("alert")).to_have_text(
        "Could not reach the server. Check your connection, then retry."
    )
    admin.server.start()
    error.get_by_role("button", name="Retry").click()
    expect(error).to_be_hidden()
    expect(page.get_by_test_id("key-row")).to_have_count(2)  # the active keys (one static)

    dialog = open_create_dialog(page, "Made on retry")
    admin.server.stop()
    dialog.get_by_role("button", name="Create", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text("Could not reach the server")
    expect(dialog.get_by_role("button", name="Create", exact=True)).to_be_enabled()
    assert [i.name for i in admin.key_infos()] == ["Production"]
    admin.server.start()
    dialog.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_visible()
    close_secret(page)
    expect(row(page, "Made on retry")).to_be_visible()
    assert sorted(i.name for i in admin.key_infos()) == ["Made on retry", "Production"]
    assert page_errors.uncaught == []


def test_the_list_and_the_activity_each_clear_only_their_own_error(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    """Refresh loads both side by side into one error area: one's success must not hide
    the other's failure (a stale list, no error, no Retry). The held answer comes last."""
    admin.create_key("Production")
    open_page(page, admin)
    error = page.get_by_test_id("error")
    events = page.get_by_test_id("audit-row")

    def unavailable(route: Any) -> None:
        body = {"error": {"message": "key store unavailable", "code": 50300, "statusCode": 503}}
        route.fulfill(status=503, content_type="application/json", body=json.dumps(body))

    # The list fails; the activity answers after it (a new event shows when it has).
    keys_api, audit_api = re.compile(r".*/api/keys\?status=.*"), re.compile(r".*/api/audit\?.*")
    page.route(keys_api, unavailable)
    admin.hold.arm("GET", f"{PREFIX}/api/audit")
    admin.create_key("Staging")
    page.get_by_role("button", name="Refresh", exact=True).click()
    assert admin.hold.arrived.acquire(timeout=10)
    expect(error.get_by_role("alert")).to_have_text("key store unavailable (50300)")
    admin.hold.release()
    expect(events.filter(has_text="name: Staging")).to_have_count(1)
    expect(error.get_by_role("alert")).to_have_text("key store unavailable (50300)")
    expect(row(page, "Staging")).to_have_count(0)  # the list is stale: say so
    page.unroute(keys_api)
    error.get_by_role("button", name="Retry").click()
    expect(row(page, "Staging")).to_be_visible()
    expect(error).to_be_hidden()

    # The other way round: the activity fails; the list answers after it.
    page.route(audit_api, unavailable)
    admin.hold.arm("GET", KEYS_API)
    admin.create_key("Development")
    page.get_by_role("button", name="Refresh", exact=True).click()
    assert admin.hold.arrived.acquire(timeout=10)
    expect(error.get_by_role("alert")).to_have_text("key store unavailable (50300)")
    admin.hold.release()
    expect(row(page, "Development")).to_be_visible()
    expect(error.get_by_role("alert")).to_have_text("key store unavailable (50300)")
    expect(events.filter(has_text="name: Development")).to_have_count(0)
    page.unroute(audit_api)
    error.get_by_role("button", name="Retry").click()
    expect(events.filter(has_text="name: Development")).to_have_count(1)
    expect(error).to_be_hidden()
    assert page_errors.uncaught == []
    assert all("status of 503" in text for text in page_errors.console)


# -- one request at a time (safeguard 5) --------------------------------------------------------


def test_no_double_create_while_a_request_is_in_flight(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    open_page(page, admin)
    dialog = open_create_dialog(page, "Only once")
    admin.hold.arm("POST", KEYS_API)
    create = dialog.get_by_role("button", name="Create", exact=True)
    create.click()
    assert admin.hold.arrived.acquire(timeout=10)
    expect(create).to_be_disabled()
    expect(dialog.get_by_label("Name")).to_be_disabled()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_disabled()
    page.keyboard.press("Escape")  # not while in flight
    expect(dialog).to_be_visible()
    for _ in range(3):  # a script or a fast double submit gets nowhere either
        page.evaluate("document.getElementById('create-form').requestSubmit()")
    admin.hold.release()
    expect(page.get_by_role("dialog", name="Copy your new key")).to_be_visible()
    close_secret(page)
    assert [i.name for i in admin.key_infos()] == ["Only once"]
    assert admin.hits[KEYS_API] >= 1
    assert len(admin.audit("key.created")) == 1
    assert_clean(page_errors)


def test_no_double_revoke_while_a_request_is_in_flight(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    key_name = admin.create_key("Twice").partition(":")[0]
    admin.create_key("Other")
    open_page(page, admin)
    row(page, "Twice").get_by_role("button", name="Revoke").click()
    dialog = page.get_by_role("dialog", name="Revoke “Twice”?")
    dialog.get_by_label("Reason").fill("rotating out")
    admin.hold.arm("POST", f"{KEYS_API}/{re.escape(key_name)}/revoke")
    confirm = dialog.get_by_role("button", name="Revoke key")
    confirm.click()
    assert admin.hold.arrived.acquire(timeout=10)
    expect(confirm).to_be_disabled()
    page.evaluate("document.getElementById('revoke-form').requestSubmit()")
    # The other rows' buttons are off too: no second change starts meanwhile
    # (behind the modal dialog they are inert, so found by CSS, not by role).
    others = row(page, "Other").locator("button")
    expect(others).to_have_count(2)
    for button in others.all():
        expect(button).to_be_disabled()
    # Nothing optimistic: the row says Active until the server has answered.
    expect(row(page, "Twice").locator("[data-testid=key-status]")).to_have_text("Active")
    listed = admin.hits[KEYS_API]
    admin.hold.release()
    expect(dialog).to_be_hidden()
    expect(row(page, "Twice").get_by_test_id("key-status")).to_have_text("Revoked")
    assert admin.hits[KEYS_API] == listed + 1  # the list was fetched again
    expect(row(page, "Other").get_by_role("button", name="Revoke")).to_be_enabled()
    assert admin.hits[f"{KEYS_API}/{key_name}/revoke"] == 1
    assert len(admin.audit("key.revoked")) == 1
    assert_clean(page_errors)


# -- read-only sessions and CSRF ----------------------------------------------------------------


def fetch_post(page: Page, path: str, body: dict[str, Any], csrf: str | None) -> dict[str, Any]:
    """A POST from the page's own origin, with its cookie; ``csrf`` as the header (or none)."""
    result: dict[str, Any] = page.evaluate(
        """async ({ path, body, csrf }) => {
          const headers = { 'Content-Type': 'application/json' };
          if (csrf !== null) headers['X-TokenReq-CSRF'] = csrf;
          const r = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body) });
          return { status: r.status, body: await r.json() };
        }""",
        {"path": path, "body": body, "csrf": csrf},
    )
    return result


def session_csrf(page: Page) -> str:
    csrf: str = page.evaluate(
        f"fetch('{PREFIX}/api/session').then((r) => r.json()).then((s) => s.csrf)"
    )
    return csrf


def test_a_read_only_session_sees_no_changes_and_the_api_refuses_them(
    page: Page, page_errors: PageErrors, admin: Admin, tmp_path: Path
) -> None:
    full = admin.create_key("Production")
    key_name = full.partition(":")[0]
    open_page(page, admin, actor="auditor", scopes=("keys:read",))
    expect(page.get_by_test_id("access")).to_have_text("Read only")
    expect(row(page, "Production")).to_be_visible()
    expect(page.get_by_role("button", name="Create key")).to_be_hidden()
    expect(page.get_by_role("button", name="Rotate")).to_have_count(0)
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
    expect(page.get_by_test_id("audit-row").first).to_be_visible()  # reading is allowed
    screenshot(page, tmp_path, "read-only")

    csrf = session_csrf(page)
    for path, body in [
        (KEYS_API, {"name": "sneaky"}),
        (f"{KEYS_API}/{key_name}/rotate", {}),
        (f"{KEYS_API}/{key_name}/revoke", {"reason": "sneaky"}),
    ]:
        answer = fetch_post(page, path, body, csrf)
        assert answer["status"] == 403
        assert answer["body"]["error"]["code"] == 40300
    assert [(i.name, i.status) for i in admin.key_infos()] == [("Production", "active")]
    assert admin.exchange(full) == 200
    assert_clean(page_errors, refused=3)


def test_a_change_without_the_csrf_header_is_refused(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    full = admin.create_key("Production")
    key_name = full.partition(":")[0]
    open_page(page, admin)
    csrf = session_csrf(page)
    for header in (None, "", "x" * len(csrf), csrf[:-1]):
        for path, body in [
            (KEYS_API, {"name": "forged"}),
            (f"{KEYS_API}/{key_name}/revoke", {"reason": "forged"}),
        ]:
            answer = fetch_post(page, path, body, header)
            assert answer["status"] == 403, (header, path)
            assert answer["body"]["error"]["code"] == 40300
            assert "CSRF" in answer["body"]["error"]["message"]
    assert [(i.name, i.status) for i in admin.key_infos()] == [("Production", "active")]
    assert admin.exchange(full) == 200

    answer = fetch_post(page, KEYS_API, {"name": "with the header"}, csrf)  # the control
    assert answer["status"] == 201
    assert page_errors.uncaught == []


def test_the_page_itself_sends_the_csrf_header_with_every_change(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    open_page(page, admin)
    csrf = session_csrf(page)
    sent: list[str | None] = []
    page.on(
        "request",
        lambda r: sent.append(r.headers.get("x-tokenreq-csrf")) if r.method == "POST" else None,
    )
    full = create_through_page(page, "Checked")
    close_secret(page)
    row(page, "Checked").get_by_role("button", name="Revoke").click()
    page.get_by_label("Reason").fill("done checking")
    page.get_by_role("button", name="Revoke key").click()
    expect(row(page, "Checked").get_by_test_id("key-status")).to_have_text("Revoked")
    assert sent == [csrf, csrf]
    assert admin.exchange(full) == 40131
    assert_clean(page_errors)


def test_a_second_tab_takes_over_and_the_first_is_gated_on_its_next_change(
    page: Page, page_errors: PageErrors, admin: Admin
) -> None:
    """Two links in one browser: the second session's cookie replaces the first's, so
    the first tab's CSRF value no longer matches: its change is refused (403) and
    it shows the gate instead of failing quietly."""
    open_page(page, admin)
    second = page.context.new_page()
    second.goto(admin.page_url(admin.ticket()))
    expect(second.get_by_test_id("app")).to_be_visible()

    page.get_by_role("button", name="Create key", exact=True).click()
    page.get_by_label("Name").fill("From the first tab")
    page.get_by_role("dialog").get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_test_id("gate")).to_be_visible()
    expect(page.get_by_test_id("gate-reason")).to_contain_text("Refused. CSRF")
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert admin.key_infos() == []

    created = create_through_page(second, "From the second tab")  # the new session works
    close_secret(second)
    assert [i.name for i in admin.key_infos()] == ["From the second tab"]
    assert admin.exchange(created) == 200
    assert_clean(page_errors, refused=1)


def test_the_activity_filter(page: Page, page_errors: PageErrors, admin: Admin) -> None:
    full = admin.create_key("Production")
    assert admin.exchange(full) == 200  # a token.issued event
    open_page(page, admin)
    events = page.get_by_test_id("audit-row")
    expect(events.filter(has_text="Token issued")).to_have_count(1)
    expect(events.filter(has_text="Session opened")).to_have_count(1)
    page.get_by_label("Show").select_option(label="Key changes")
    expect(events).to_have_count(1)
    expect(events.first).to_contain_text("Key created")
    expect(events.first).to_contain_text("name: Production")
    page.get_by_label("Show").select_option(label="Key-page sessions")
    expect(events.filter(has_text="Key created")).to_have_count(0)
    expect(events.filter(has_text="Session opened")).to_have_count(1)
    expect(events.filter(has_text="Link issued")).to_have_count(1)
    page.get_by_label("Show").select_option(label="Tokens")
    expect(events).to_have_count(1)
    expect(events.first).to_contain_text("Token issued")
    assert_clean(page_errors)
