"""Errors render themselves: one path from a raised TokenReqError to the Ably response."""

from __future__ import annotations

import json

import pytest
from flask import Blueprint, Flask, abort
from werkzeug.exceptions import HTTPException

from flask_tokenreq import errors
from flask_tokenreq.errors import (
    ERRORS_BY_CODE,
    InvalidCredentials,
    NonceReplayed,
    TokenReqError,
    ably_errors,
    error_for_code,
)


def _app() -> Flask:
    app = Flask(__name__)

    @app.get("/refused")
    def refused() -> str:
        raise NonceReplayed("Nonce value replayed: sign a new one")

    @app.get("/custom")
    def custom() -> str:
        raise TokenReqError("teapot", code=41800, status=418)

    return app


def _ably_error(response: object, status: int, code: int) -> dict[str, object]:
    assert getattr(response, "status_code") == status  # noqa: B009
    headers = getattr(response, "headers")  # noqa: B009
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Ably-ErrorCode"] == str(code)
    body = json.loads(getattr(response, "get_data")(as_text=True))  # noqa: B009
    assert body["error"]["code"] == code
    assert body["error"]["statusCode"] == status
    assert headers["X-Ably-ErrorMessage"] == body["error"]["message"]
    error: dict[str, object] = body["error"]
    return error


def test_raised_anywhere_it_renders_itself_without_a_handler() -> None:
    client = _app().test_client()
    error = _ably_error(client.get("/refused"), 401, 40105)
    assert error["message"] == "Nonce value replayed: sign a new one"
    assert client.get("/refused").headers["WWW-Authenticate"] == 'Bearer realm="tokenreq"'
    _ably_error(client.get("/custom"), 418, 41800)


def test_it_is_a_werkzeug_http_exception_with_the_ably_code() -> None:
    error = NonceReplayed()
    assert isinstance(error, HTTPException)
    assert (error.code, error.status, error.name) == (40105, 401, "Unauthorized")
    assert str(error) == "Nonce value replayed"
    assert error.get_response().status_code == 401


def test_the_code_table_is_explicit_and_complete() -> None:
    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, TokenReqError) and obj is not TokenReqError
    }
    # ProviderUnreachable shares 50003 with StoreUnavailable: the table names the server-side one.
    assert classes - set(ERRORS_BY_CODE.values()) == {errors.ProviderUnreachable}
    for code, cls in ERRORS_BY_CODE.items():
        assert cls.code == code
    made = error_for_code(40101, 401, "wrong key")
    assert type(made) is InvalidCredentials
    unknown = error_for_code(49999, 400, "new code")
    assert type(unknown) is TokenReqError
    assert (unknown.code, unknown.status) == (49999, 400)


def test_ably_errors_turns_werkzeug_errors_and_crashes_into_ably_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Flask(__name__)
    bp = Blueprint("resource", __name__)

    @bp.route("/only-get", methods=["GET"])
    def only_get() -> str:
        return "ok"

    @bp.get("/crash")
    def crash() -> str:
        raise RuntimeError("database password is hunter2")

    @bp.get("/gone")
    def gone() -> str:
        abort(404)

    ably_errors(bp)
    app.register_blueprint(bp)
    client = app.test_client()
    _ably_error(client.get("/gone"), 404, 40400)
    response = client.post("/only-get")
    # A 405 for a method the route lacks is the app's routing, outside the blueprint.
    assert response.status_code == 405
    error = _ably_error(client.get("/crash"), 500, 50000)
    assert "hunter2" not in json.dumps(error)
    assert any("hunter2" in str(r.exc_info) for r in caplog.records if r.exc_info)

    whole = Flask(__name__)
    whole.add_url_rule("/only-get", "only_get", only_get, methods=["GET"])
    ably_errors(whole)
    response = whole.test_client().post("/only-get")
    _ably_error(response, 405, 40500)
    assert "GET" in response.headers["Allow"]
    _ably_error(whole.test_client().get("/nowhere"), 404, 40400)


def test_header_message_is_one_latin1_line() -> None:
    error = TokenReqError("line one\nline two \u2603", code=40000, status=400)
    headers = dict(error.get_headers())
    assert headers["X-Ably-ErrorMessage"] == "line one line two ?"


def test_error_response_still_works_with_a_deprecation_warning() -> None:
    """``http.error_response`` (deprecated for one release): the error's own response."""
    from flask_tokenreq.http import error_response

    app = Flask(__name__)
    with app.test_request_context(), pytest.warns(DeprecationWarning, match="raise the error"):
        response = error_response(NonceReplayed("replayed"))
    assert response.status_code == 401
    assert response.headers["X-Ably-ErrorCode"] == "40105"
    assert json.loads(response.get_data())["error"]["code"] == 40105


def test_an_answer_holding_a_lone_surrogate_is_written_escaped() -> None:
    """JSON can carry a lone surrogate and UTF-8 cannot: the answer is written with
    ``\\u`` escapes (same value for any JSON reader), never a 500 after the view ran."""
    import msgpack

    from flask_tokenreq.http import ably_response, json_response

    app = Flask(__name__)

    @app.get("/echo")
    def echo() -> object:
        return json_response({"target": "clientId:\ud800", "name": "caf\u00e9"})

    @app.get("/refused")
    def refused() -> str:
        raise TokenReqError("No key named 'a\ud800' is known", code=40101, status=401)

    @app.get("/ably")
    def ably() -> object:
        return ably_response({"target": "x\ud800"})

    client = app.test_client()
    response = client.get("/echo")
    assert response.status_code == 200
    assert response.get_data().isascii()
    assert json.loads(response.get_data()) == {"target": "clientId:\ud800", "name": "caf\u00e9"}
    error = client.get("/refused")
    assert error.status_code == 401
    assert json.loads(error.get_data())["error"]["message"] == "No key named 'a\ud800' is known"
    assert error.headers["X-Ably-ErrorMessage"] == "No key named 'a?' is known"
    assert json.loads(client.get("/ably").get_data()) == {"target": "x\ud800"}
    packed = client.get("/ably", headers={"Accept": "application/x-msgpack"})
    assert packed.status_code == 200
    assert msgpack.unpackb(packed.get_data()) == {"target": "x\\ud800"}
    # Text without one is still written as is (what ably-js writes).
    assert json_response({"name": "caf\u00e9"}).get_data() == '{"name":"café"}'.encode()
