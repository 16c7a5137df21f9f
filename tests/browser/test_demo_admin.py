"""The demo's key management in Debian's Chromium: carol manages keys, alice and bob may not.

The demo app decides who may manage keys (``Account.manages_keys`` in
examples/accounts.py): carol's page links to ``/manage-keys``, which issues a
single-use ticket on the server and redirects to the KeyAdmin page. The demo
runs on its managed keys here (no ``TOKENREQ_KEY``), as ``make demo`` does.
"""

# The demo tests' fixtures (page, serve_demo) are imported by name.
# ruff: noqa: F811

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from examples.accounts import USERS
from flask_tokenreq import sign_token_request

from .conftest import PageErrors
from .test_demo import (  # noqa: F401
    Demo,
    page,
    publish,
    screenshot,
    serve_demo,
    sign_in,
)

with contextlib.suppress(ImportError):  # without Playwright, `browser` skips
    from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

ADMIN = "/tokenreq/admin/"
#: The demo as ``make demo`` runs it: the issuer signs with the managed "Demo key".
MANAGED = {"TOKENREQ_KEY": None}


def exchange_code(server: Demo, full_key: str) -> int:
    treq = sign_token_request(full_key)
    response = requests.post(
        f"{server.url}/provider/keys/{treq.key_name}/requestToken", json=treq.to_dict(), timeout=10
    )
    return 200 if response.status_code == 200 else int(response.json()["error"]["code"])


def test_carol_manages_keys_from_her_page(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    server = serve_demo(**MANAGED)
    sign_in(page, server.url, "carol")

    # Her token flow is alice's: she may publish.
    expect(page.get_by_test_id("token-client-id")).to_have_text("carol")
    expect(page.get_by_test_id("token-capability")).to_contain_text(
        "*: history, publish, subscribe"
    )
    publish(page, "hello from carol")
    expect(page.get_by_test_id("event").first).to_contain_text("hello from carol")
    link = page.get_by_role("link", name="Manage keys")
    expect(link).to_have_attribute("href", "/manage-keys")  # no ticket in the demo page
    screenshot(page, tmp_path, "carol")

    with page.expect_response(lambda r: r.url.endswith("/manage-keys")) as redirect:
        link.click()
    assert redirect.value.status == 303
    assert redirect.value.headers["location"].startswith(f"{ADMIN}?ticket=")
    assert redirect.value.headers["cache-control"] == "no-store"
    expect(page.get_by_test_id("actor")).to_have_text("carol")
    expect(page.get_by_test_id("access")).to_have_text("Can manage keys")
    assert page.url == f"{server.url}{ADMIN}"  # the ticket has left the address bar
    demo_key = page.get_by_test_id("key-row").filter(has_text="Demo key")
    expect(demo_key.get_by_test_id("key-status")).to_have_text("Active")
    expect(page.get_by_test_id("audit-row").first).to_contain_text("Session opened")

    page.get_by_role("button", name="Create key", exact=True).click()
    page.get_by_label("Name").fill("Carol's CI")
    page.get_by_role("dialog").get_by_role("button", name="Create", exact=True).click()
    secret = page.get_by_test_id("secret-value").inner_text()
    page.get_by_label("I have copied this secret").check()
    page.get_by_role("button", name="Done").click()
    assert exchange_code(server, secret) == 200

    ci = page.get_by_test_id("key-row").filter(has_text="Carol's CI")
    ci.get_by_role("button", name="Revoke").click()
    page.get_by_label("Reason").fill("demo over")
    page.get_by_role("button", name="Revoke key").click()
    expect(ci.get_by_test_id("key-status")).to_have_text("Revoked")
    assert exchange_code(server, secret) == 40131
    screenshot(page, tmp_path, "carol-keys")

    # Back on the demo page, her tokens (signed with the Demo key) still work.
    page.goto(f"{server.url}/")
    publish(page, "still here")
    expect(page.get_by_test_id("event").first).to_contain_text("still here")
    assert page_errors.uncaught == []
    assert page_errors.console == []


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_others_get_no_link_and_no_ticket(
    page: Page, page_errors: PageErrors, serve_demo: Callable[..., Demo], user: str
) -> None:
    server = serve_demo(**MANAGED)
    sign_in(page, server.url, user)
    expect(page.get_by_test_id("token-client-id")).to_have_text(user)
    expect(page.get_by_role("link", name="Manage keys")).to_have_count(0)

    response = page.request.get(f"{server.url}/manage-keys", max_redirects=0)
    assert response.status == 403
    assert response.json()["error"]["code"] == 40300
    assert "location" not in response.headers
    with server.app.app_context():
        audit = server.app.extensions["tokenreq_provider"]._state().audit
        audit.flush()
        assert audit.query(event="ticket.issued") == []

    page.goto(f"{server.url}{ADMIN}")  # and the key page itself stays shut
    expect(page.get_by_test_id("gate")).to_be_visible()


def test_signed_out_manage_keys_goes_to_sign_in(serve_demo: Callable[..., Demo]) -> None:
    server = serve_demo(**MANAGED)
    response = requests.get(f"{server.url}/manage-keys", allow_redirects=False, timeout=10)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_only_carol_manages_keys() -> None:
    assert sorted(name for name, account in USERS.items() if account.manages_keys) == ["carol"]
