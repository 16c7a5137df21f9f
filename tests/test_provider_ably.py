"""ably-python (a real Ably SDK) against the provider over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from flask import Flask, g

from flask_tokenreq.provider import TokenProvider
from flask_tokenreq.stores import MemoryNonceStore

from .conftest import KEY
from .servers import serve_app
from .test_provider import SIGNING_SECRET

ably = pytest.importorskip("ably", reason="ably-python is not installed (test extra)")


def make_app() -> Flask:
    app = Flask(__name__)
    app.config.update(TOKENREQ_SIGNING_SECRET=SIGNING_SECRET, TOKENREQ_PROVIDER_KEYS=[KEY])
    provider = TokenProvider(app, nonces=MemoryNonceStore(warn=False))

    @app.get("/whoami")
    @provider.require("subscribe", resource="news")
    def whoami() -> dict[str, Any]:
        return {"clientId": g.tokenreq.client_id, "kind": g.tokenreq.kind}

    return app


def test_ably_python_exchanges_and_uses_tokens() -> None:
    app = make_app()

    async def scenario(host: str, port: int) -> dict[str, Any]:
        options = {"rest_host": host, "port": port, "tls": False}
        signer = ably.AblyRest(key=KEY, **options)

        async def callback(params: Any) -> Any:
            return await signer.auth.create_token_request(
                {"client_id": "py-client", "capability": {"news": ["subscribe"]}}
            )

        rest = ably.AblyRest(auth_callback=callback, client_id="py-client", **options)
        try:
            details = await rest.auth.authorize()
            server_time = await rest.time()
            direct = await signer.auth.request_token({"ttl": 60_000})
            response = await rest.request("GET", "/whoami", version="5")
            return {
                "details": details,
                "time": server_time,
                "direct": direct,
                "whoami": response.items,
            }
        finally:
            await rest.close()
            await signer.close()

    with serve_app(app) as url:
        host, _, port = url.removeprefix("http://").partition(":")
        result = asyncio.run(scenario(host, int(port)))
    details = result["details"]
    assert details.client_id == "py-client"
    assert details.expires - details.issued == 3_600_000
    assert isinstance(result["time"], int)
    assert result["direct"].expires - result["direct"].issued == 60_000
    assert result["whoami"] == [{"clientId": "py-client", "kind": "token"}]
