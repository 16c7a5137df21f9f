"""Every Python and JavaScript snippet of README.md runs, as written, in this suite.

The fenced ```python and ```js blocks are read from README.md itself, so a
snippet that stops working fails a test, and a new snippet nobody tests fails
:func:`test_every_snippet_is_tested`.

- Step 1 and step 3 (the issuer, then a provider with a publish view and a
  history route) are executed together as one app; the test adds only what
  step 1 says the app already has (a secret key, a flask-login user loader and
  a way to sign in). Real ably-js in Node (msgpack and JSON) and ably-python
  then publish and read history through it.
- Step 2 (ably-js in a page of that app) runs in Debian's Chromium with the
  real ably-js browser build.
- The Node client snippet and the ably-python snippet run against the two
  example servers that ``make examples`` starts.
- The "Testing your app" snippet is saved as a test file in an empty folder
  and run by plain pytest (the plugin comes from the installed package).

The one change made to a snippet's text: host and port. The tests replace
``127.0.0.1:5000`` / ``5001`` with the ports the test servers got, and step 2's
``import 'ably'`` resolves to ably-js with ``endpoint``/``port``/``tls``
pointing at the test server instead of Ably's hosts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import requests
from flask import Flask, Response, send_file
from flask_login import UserMixin, login_user

from tests.conftest import ROOT, unavailable
from tests.examples_stack import run_examples
from tests.servers import serve_app

README = ROOT / "README.md"
ABLY_JS = ROOT / "tests" / "interop" / "node_modules" / "ably" / "build" / "ably.js"
#: Step 1/3 environment: the key both roles use and the provider's token secret.
ABLY_KEY = "readme.key1:readme-secret-0123456789abcdef0123456789abcdef"
TOKEN_SIGNING_SECRET = "readme-token-signing-secret-0123456789abcdef"
SESSION_KEY = "readme-session-key-0123456789abcdef0123456789"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int


def read_blocks() -> list[Block]:
    """The fenced code blocks of README.md (language, text, first line)."""
    blocks = []
    lines = README.read_text(encoding="utf-8").splitlines(keepends=True)
    fence = re.compile(r"^```(\w*)\s*$")
    current: list[str] | None = None
    lang, start = "", 0
    for number, line in enumerate(lines, start=1):
        match = fence.match(line)
        if current is None and match:
            current, lang, start = [], match.group(1), number + 1
        elif current is not None and line.rstrip() == "```":
            blocks.append(Block(lang, "".join(current), start))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, "README.md has an unclosed code fence"
    return blocks


#: Each tested snippet: its language and a line that only it contains.
SNIPPETS = {
    "step1": ("python", "issuer = TokenIssuer(app"),
    "step3": ("python", "provider = TokenProvider(app)"),
    "ably_python": ("python", "from ably import AblyRest"),
    "key_admin": ("python", "admin = KeyAdmin(app)"),
    "step2": ("js", "new Ably.Rest({ authUrl: '/api/tokenreq/token' })"),
    "node_client": ("js", "// client.mjs"),
    "testing": ("python", "# test_exchange.py"),
}


def snippet(name: str) -> str:
    lang, marker = SNIPPETS[name]
    found = [b for b in read_blocks() if b.lang == lang and marker in b.text]
    assert len(found) == 1, f"README.md must have exactly one {lang} block with {marker!r}"
    return found[0].text


def test_every_snippet_is_tested() -> None:
    """Every python/js block of the README is one of the snippets tested here."""
    code = [b for b in read_blocks() if b.lang in ("python", "py", "js", "javascript", "mjs")]
    untested = [
        f"README.md:{b.line} ({b.lang})"
        for b in code
        if not any(b.lang == lang and marker in b.text for lang, marker in SNIPPETS.values())
    ]
    assert untested == [], "add a test for these snippets (tests/test_readme.py)"
    assert len(code) == len(SNIPPETS)


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace host:port strings; each one must occur (so a README change is noticed)."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} no longer in the snippet: update tests/test_readme.py"
        text = text.replace(old, new)
    return text


# -- steps 1 and 3: one app -------------------------------------------------------------------


class ReadmeUser(UserMixin):
    """The user model the snippets assume: ``username``, ``can_publish``, ``can_manage_keys``."""

    def __init__(self, username: str) -> None:
        self.id = username
        self.username = username
        self.can_publish = username == "alice"
        self.can_manage_keys = username == "alice"


@pytest.fixture
def readme_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The variables the snippets read; the nonce store in a temporary folder."""
    import os

    for name in list(os.environ):
        if name.startswith("TOKENREQ_") and not name.startswith("TOKENREQ_TEST"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ABLY_KEY", ABLY_KEY)
    monkeypatch.setenv("TOKEN_SIGNING_SECRET", TOKEN_SIGNING_SECRET)
    monkeypatch.setenv("TOKENREQ_NONCE_STORE", f"sqlite:///{tmp_path / 'nonces.sqlite3'}")


def run_steps(*names: str) -> dict[str, Any]:
    """Execute README snippets in order in one fresh namespace, as one module would."""
    namespace: dict[str, Any] = {"__name__": "readme_app"}
    for name in names:
        exec(compile(snippet(name), f"README.md[{name}]", "exec"), namespace)
    return namespace


def add_what_step1_assumes(namespace: dict[str, Any]) -> Flask:
    """A secret key, a user loader and a sign-in route: "your app already uses flask-login"."""
    app: Flask = namespace["app"]
    app.secret_key = SESSION_KEY
    namespace["login_manager"].user_loader(
        lambda user_id: ReadmeUser(user_id) if user_id in ("alice", "bob") else None
    )

    @app.post("/test-login/<username>")
    def test_login(username: str) -> Response:
        login_user(ReadmeUser(username))
        return Response(status=204)

    return app


def signed_in_cookie(url: str, username: str) -> str:
    session = requests.Session()
    session.post(f"{url}/test-login/{username}", timeout=10).raise_for_status()
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def test_step1_runs_as_written(readme_env: None) -> None:
    namespace = run_steps("step1")
    app = add_what_step1_assumes(namespace)
    client = app.test_client()
    assert client.get("/api/tokenreq/token").status_code == 401
    client.post("/test-login/bob")
    body = client.get("/api/tokenreq/token").get_json()
    assert body["keyName"] == "readme.key1"
    assert body["clientId"] == "bob"
    assert json.loads(body["capability"]) == {"*": ["history", "subscribe"]}


def test_key_admin_snippet_runs_as_written(readme_env: None, tmp_path: Path) -> None:
    """Steps 1 and 3 with managed keys on, then the key page and its ticket route."""
    from cryptography.fernet import Fernet

    namespace = run_steps("step1")
    app = add_what_step1_assumes(namespace)
    app.config["TOKENREQ_KEY_ENCRYPTION_KEYS"] = [Fernet.generate_key().decode()]
    app.config["TOKENREQ_DATABASE_URL"] = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    for name in ("step3", "key_admin"):
        exec(compile(snippet(name), f"README.md[{name}]", "exec"), namespace)
    client = app.test_client()
    assert client.get("/manage-keys").status_code == 403  # signed out
    client.post("/test-login/bob")
    refused = client.get("/manage-keys")
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == 40300
    client.post("/test-login/alice")
    sent = client.get("/manage-keys")
    assert sent.status_code == 303
    page, _, ticket = sent.headers["Location"].partition("?ticket=")
    assert page == "/tokenreq/admin/"
    assert client.get(page).status_code == 200
    session = client.get("/tokenreq/admin/session/ticket/exchange", query_string={"ticket": ticket})
    assert session.status_code == 200
    assert session.get_json()["actor"] == "alice"
    assert client.get("/tokenreq/admin/api/keys").status_code == 200
    namespace["provider"].close()


@pytest.fixture
def readme_app(readme_env: None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Steps 1 and 3 as one app on loopback: (base URL, the snippets' namespace)."""
    namespace = run_steps("step1", "step3")
    app = add_what_step1_assumes(namespace)
    with serve_app(app) as url:
        yield url, namespace


NODE_CLIENT = """
import * as Ably from 'ably';
const cfg = JSON.parse(process.argv[2]);
const rest = new Ably.Rest({
  authUrl: cfg.url + '/api/tokenreq/token', authHeaders: { cookie: cfg.cookie },
  endpoint: '127.0.0.1', port: cfg.port, tls: false, useBinaryProtocol: cfg.binary,
});
await rest.time();
const out = {};
const channel = rest.channels.get('news');
try {
  await channel.publish('text', 'hello \u2713');
  await channel.publish('binary', Buffer.from([0, 1, 255]));
  await channel.publish('object', { a: [1, 'two'] });
  await channel.publish([{ name: 'batch1', data: 'x' }, { name: 'batch2', data: 'y' }]);
  out.published = true;
} catch (err) {
  out.refused = err.code;
}
const page = await channel.history();
out.history = page.items.map((m) => ({
  name: m.name,
  data: Buffer.isBuffer(m.data) ? { bytes: [...m.data] } : m.data,
  clientId: m.clientId,
}));
console.log(JSON.stringify(out));
"""


def run_node(node: str, tmp_path: Path, source: str, *args: str) -> str:
    """Run an ES module with real ably-js (tests/interop/node_modules) in Node."""
    (tmp_path / "node_modules").symlink_to(ROOT / "tests" / "interop" / "node_modules")
    script = tmp_path / "client.mjs"
    script.write_text(source, encoding="utf-8")
    done = subprocess.run(
        [node, str(script), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"node failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


@pytest.mark.node
@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_step3_publish_and_history_answer_what_ably_js_expects(
    readme_app: tuple[str, dict[str, Any]], node: str, tmp_path: Path, binary: bool
) -> None:
    url, namespace = readme_app
    config = {"url": url, "port": int(url.rsplit(":", 1)[1]), "binary": binary}
    alice = json.loads(
        run_node(
            node,
            tmp_path,
            NODE_CLIENT,
            json.dumps({**config, "cookie": signed_in_cookie(url, "alice")}),
        )
    )
    assert alice["published"] is True
    assert alice["history"] == [
        {"name": "batch2", "data": "y", "clientId": "alice"},
        {"name": "batch1", "data": "x", "clientId": "alice"},
        {"name": "object", "data": {"a": [1, "two"]}, "clientId": "alice"},
        {"name": "binary", "data": {"bytes": [0, 1, 255]}, "clientId": "alice"},
        {"name": "text", "data": "hello \u2713", "clientId": "alice"},
    ]
    assert len(namespace["messages"]["news"]) == 5

    bob_dir = tmp_path / "bob"
    bob_dir.mkdir()
    bob = json.loads(
        run_node(
            node,
            bob_dir,
            NODE_CLIENT,
            json.dumps({**config, "cookie": signed_in_cookie(url, "bob")}),
        )
    )
    assert bob["refused"] == 40160  # bob may read history, not publish
    assert len(bob["history"]) == 5


def test_step3_with_ably_python(readme_app: tuple[str, dict[str, Any]]) -> None:
    ably = pytest.importorskip("ably", reason="ably-python is not installed (test extra)")
    url, _namespace = readme_app

    async def main() -> list[tuple[str, Any, str]]:
        rest = ably.AblyRest(
            auth_url=url + "/api/tokenreq/token",
            auth_headers={"cookie": signed_in_cookie(url, "alice")},
            endpoint="127.0.0.1",
            port=int(url.rsplit(":", 1)[1]),
            tls=False,
        )
        try:
            channel = rest.channels.get("py")
            await channel.publish("greeting", "hello")
            await channel.publish("bytes", b"\x00\xff")
            page = await channel.history()
            return [(m.name, m.data, m.client_id) for m in page.items]
        finally:
            await rest.close()

    assert asyncio.run(main()) == [
        ("bytes", b"\x00\xff", "alice"),
        ("greeting", "hello", "alice"),
    ]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/x-msgpack", b"\xc1", 400, 40001),  # never-used msgpack byte
        ("application/x-msgpack", msgpack.packb([1, 2]), 400, 40001),  # not message objects
        ("application/json", b"[" * 5000 + b"]" * 5000, 400, 40001),
        ("application/json", b"{", 400, 40001),
        ("application/json", b'"x' + b"y" * 70_000 + b'"', 413, 41300),  # over 64 KiB
        ("text/plain", b"hello", 415, 41500),
    ],
    ids=["bad-msgpack", "not-messages", "nested-json", "bad-json", "too-large", "not-ably"],
)
def test_step3_publish_refuses_bad_bodies_with_4xx(
    readme_app: tuple[str, dict[str, Any]],
    content_type: str,
    body: bytes,
    status: int,
    code: int,
) -> None:
    url, _ = readme_app
    session = requests.Session()
    session.post(f"{url}/test-login/alice", timeout=10).raise_for_status()
    token_request = session.get(url + "/api/tokenreq/token", timeout=10).json()
    token = requests.post(
        f"{url}/keys/{token_request['keyName']}/requestToken", json=token_request, timeout=10
    ).json()["token"]
    response = requests.post(
        url + "/channels/news/messages",
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


# -- step 2: ably-js in a page of the app, in Chromium -------------------------------------------

SHIM = """// The README's `import * as Ably from 'ably'`, in this test: the real ably-js browser
// build, pointed at this test server instead of Ably's hosts (endpoint, port, tls).
const A = globalThis.Ably;
const here = { endpoint: location.hostname, port: Number(location.port), tls: false };
export class Rest extends A.Rest {
  constructor(options) { super({ ...options, ...here }); }
}
export class Realtime extends A.Realtime {
  constructor(options) { super({ ...options, ...here }); }
}
export default A;
"""

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>README step 2</title>
<script src="/readme/ably.js"></script>
<script type="importmap">{"imports": {"ably": "/readme/ably-shim.mjs"}}</script>
<script type="module">
  try {
    await import('/readme/step2.mjs');
    document.body.dataset.result = 'ok';
  } catch (err) {
    document.body.dataset.result = `error ${err.code || ''}: ${err.message}`;
  }
</script>
<body></body>
"""


@pytest.mark.browser
def test_step2_runs_in_a_page_of_the_app(
    readme_app: tuple[str, dict[str, Any]], chromium: str
) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover
        unavailable("playwright (Python) is not installed")
    if not ABLY_JS.is_file():
        unavailable("ably-js is not installed: run `make node`")
    url, namespace = readme_app
    app: Flask = namespace["app"]

    @app.get("/readme/step2")
    def step2_page() -> Response:
        return Response(PAGE, mimetype="text/html")

    @app.get("/readme/step2.mjs")
    def step2_module() -> Response:
        return Response(snippet("step2"), mimetype="text/javascript")

    @app.get("/readme/ably-shim.mjs")
    def shim() -> Response:
        return Response(SHIM, mimetype="text/javascript")

    @app.get("/readme/ably.js")
    def ably_js() -> Response:
        return send_file(ABLY_JS, mimetype="text/javascript")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.request.post(f"{url}/test-login/alice").dispose()  # the session cookie
            page = context.new_page()
            page.goto(f"{url}/readme/step2")
            page.wait_for_selector("body[data-result]", state="attached")
            assert page.evaluate("document.body.dataset.result") == "ok"
        finally:
            browser.close()
    (message,) = namespace["messages"]["news"]
    assert (message["name"], message["data"], message["clientId"]) == ("greeting", "hello", "alice")


# -- the ably-js and ably-python snippets against `make examples` ------------------------------


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The two example servers, as ``make examples`` starts them (ports chosen free)."""
    with run_examples(tmp_path_factory.mktemp("readme-examples")) as running:
        yield {
            "127.0.0.1:5000": running.issuer_url.removeprefix("http://"),
            "5001": running.provider_url.rsplit(":", 1)[1],
        }


@pytest.mark.node
def test_node_client_snippet_against_make_examples(
    examples: dict[str, str], node: str, tmp_path: Path
) -> None:
    source = substitute(
        snippet("node_client"),
        {
            "127.0.0.1:5000": examples["127.0.0.1:5000"],
            "port: 5001": f"port: {examples['5001']}",
        },
    )
    out = run_node(node, tmp_path, source)
    assert "alice: greeting hello" in out


def test_ably_python_snippet_against_make_examples(
    examples: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ably", reason="ably-python is not installed (test extra)")
    source = substitute(
        snippet("ably_python"),
        {
            "127.0.0.1:5000": examples["127.0.0.1:5000"],
            "port=5001": f"port={examples['5001']}",
        },
    )
    exec(compile(source, "README.md[ably_python]", "exec"), {"__name__": "readme_ably"})
    out = capsys.readouterr().out
    assert out.startswith("alice [('greeting', 'hello')")


# -- "Testing your app": the snippet is a test file of an app's own suite -----------------------


def test_the_testing_snippet_runs_as_written_with_the_plugin(tmp_path: Path) -> None:
    """Saved as ``test_exchange.py`` in an empty folder, plain ``pytest`` passes it."""
    (tmp_path / "test_exchange.py").write_text(snippet("testing"), encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKENREQ_", "FLASK_", "PYTEST_", "PYTHON"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-rA"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED test_exchange.py::test_a_token_request_is_exchanged_once_and_in_time" in (
        done.stdout
    )
    assert re.search(r"^=+ 1 passed", done.stdout, re.MULTILINE), done.stdout
