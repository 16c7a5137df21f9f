"""Make docs/img/demo.png: the demo page after bob's publish was refused.

Run ``.venv/bin/python -m tests.browser.demo_screenshot docs/img/demo.png``
from the checkout. It serves the demo on loopback (temporary instance
folder), lets alice publish an event, signs bob in, has him try to publish,
and saves a full-page screenshot in Debian's Chromium. Not a test: the
browser tests check the same page.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import Browser, expect, sync_playwright

from examples import demo
from tests.browser.test_demo import sign_in
from tests.servers import serve_app

SETTINGS = {
    "SECRET_KEY": "screenshot-session-key-0123456789abcdef",
    "TOKENREQ_KEY": "demo.screenshot:screenshot-secret-0123456789abcdef0123",
    "TOKENREQ_SIGNING_SECRET": "screenshot-signing-secret-0123456789abcdef",
    "TOKENREQ_DEMO_POLL_MS": 0,
}


def publish_as(browser: Browser, url: str, user: str, data: str, out: Path | None) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    sign_in(page, url, user)
    expect(page.get_by_test_id("token-client-id")).to_have_text(user)
    page.get_by_label("Data").fill(data)
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_test_id("log-entry").first).to_contain_text("POST /provider/channels")
    if out is not None:
        expect(page.get_by_test_id("auth-header")).to_contain_text("Bearer ")
        page.screenshot(path=str(out), full_page=True)
    context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = demo.create_app(SETTINGS, instance_path=Path(tmp) / "instance")
        with serve_app(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            try:
                publish_as(browser, url, "alice", "hello from alice", None)
                publish_as(browser, url, "bob", "bob was here", args.out)
            finally:
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
