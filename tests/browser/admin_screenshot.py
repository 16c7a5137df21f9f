"""Make docs/img/admin-main.png and docs/img/admin-secret.png: the key page.

Run ``.venv/bin/python -m tests.browser.admin_screenshot docs/img`` from the
checkout. It serves the demo on loopback (temporary instance folder, managed
keys), adds a few keys as an app would have them, signs carol in, follows
her "Manage keys" link, and saves the key list and the new-secret dialog in
Debian's Chromium. Not a test: tests/browser/test_admin.py checks the page.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from examples import demo
from flask_tokenreq import sign_token_request
from tests.browser.test_demo import sign_in
from tests.servers import serve_app

SETTINGS = {
    "SECRET_KEY": "screenshot-session-key-0123456789abcdef",
    "TOKENREQ_SIGNING_SECRET": "screenshot-signing-secret-0123456789abcdef",
    "TOKENREQ_DEMO_POLL_MS": 0,
}


def seed(app: demo.Flask) -> None:
    """Keys a real app might have: in use, scoped, expiring, retired."""
    day = 86_400_000
    with app.app_context():
        provider = app.extensions["tokenreq_provider"]
        store = provider.keys.for_change()
        now = provider._state().now()
        _, web = store.create("Production web app", actor="admin:carol")
        store.create(
            "CI pipeline", {"builds:*": ["publish"]}, expires_ms=now + 90 * day, actor="admin:carol"
        )
        old, _ = store.create("Old staging server", actor="admin:carol")
        store.revoke(old.key_name, "service retired", actor="admin:carol")
        client = app.test_client()
        treq = sign_token_request(web)
        client.post(f"/provider/keys/{treq.key_name}/requestToken", json=treq.to_dict())


def open_key_page(page: Page, url: str) -> None:
    sign_in(page, url, "carol")
    page.get_by_role("link", name="Manage keys").click()
    expect(page.get_by_test_id("key-row")).to_have_count(4)
    expect(page.get_by_test_id("audit-row").first).to_be_visible()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder for admin-main.png and admin-secret.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = demo.create_app(SETTINGS, instance_path=Path(tmp) / "instance")
        seed(app)
        with serve_app(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            try:
                context = browser.new_context(
                    viewport={"width": 1280, "height": 820}, device_scale_factor=1
                )
                page = context.new_page()
                open_key_page(page, url)
                page.screenshot(path=str(args.out / "admin-main.png"))
                page.get_by_role("button", name="Create key", exact=True).click()
                page.get_by_label("Name").fill("Analytics worker")
                page.get_by_role("dialog").get_by_role("button", name="Create", exact=True).click()
                expect(page.get_by_test_id("secret-value")).to_be_visible()
                page.get_by_role("button", name="Copy").click()
                page.get_by_label("I have copied this secret").check()
                page.screenshot(path=str(args.out / "admin-secret.png"))
            finally:
                browser.close()
    print(f"wrote {args.out / 'admin-main.png'} and {args.out / 'admin-secret.png'}")


if __name__ == "__main__":
    main()
