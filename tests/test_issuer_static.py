"""``GET <prefix>/tokenreq.js``: the browser helper served by the issuer blueprint."""

from __future__ import annotations

from importlib import resources

import pytest
from flask import Flask
from flask_login import LoginManager

from flask_tokenreq.issuer import TokenIssuer

from .conftest import KEY

SCRIPT = resources.files("flask_tokenreq").joinpath("static").joinpath("tokenreq.js").read_bytes()


def make_app(url_prefix: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="static-test-session-key-0123456789", TOKENREQ_KEY=KEY)
    login = LoginManager(app)
    login.user_loader(lambda user_id: None)
    TokenIssuer(app, url_prefix=url_prefix)
    return app


@pytest.mark.parametrize(
    ("prefix", "path"),
    [(None, "/tokenreq/tokenreq.js"), ("/api/tokenreq", "/api/tokenreq/tokenreq.js")],
)
def test_serves_the_module_without_login(prefix: str | None, path: str) -> None:
    response = make_app(prefix).test_client().get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.data == SCRIPT
    assert b"export function createTokenClient" in response.data
    etag, weak = response.get_etag()
    assert etag
    assert not weak
    assert "Set-Cookie" not in response.headers


def test_is_package_data() -> None:
    assert b"ablyAuthCallback" in SCRIPT


def test_conditional_get_and_head() -> None:
    client = make_app().test_client()
    first = client.get("/tokenreq/tokenreq.js")
    etag = first.headers["ETag"]
    again = client.get("/tokenreq/tokenreq.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag
    assert again.headers["Cache-Control"] == "no-cache"
    changed = client.get("/tokenreq/tokenreq.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    assert changed.data == SCRIPT
    head = client.head("/tokenreq/tokenreq.js")
    assert head.status_code == 200
    assert head.data == b""
    assert int(head.headers["Content-Length"]) == len(SCRIPT)


def test_only_get() -> None:
    response = make_app().test_client().post("/tokenreq/tokenreq.js")
    assert response.status_code == 405


def test_token_endpoint_unchanged() -> None:
    response = make_app().test_client().get("/tokenreq/token")
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
