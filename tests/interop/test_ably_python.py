"""Real ably-python (``AblyRest``, async) against the example issuer and provider.

ably-python gets its tokens from the issuer (``auth_url`` with the login cookie
in ``auth_headers``) and talks to the provider with ``endpoint='127.0.0.1'``,
``port`` and ``tls=False``, in its default binary protocol (msgpack bodies both
ways). It sends ``client_id`` (snake case) to the authUrl and rejects any key
it does not know in a TokenRequest, so these tests also hold the issuer to the
exact seven-key wire format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from flask_tokenreq.testing import Recorder
from tests.interop.conftest import Stack

ably = pytest.importorskip("ably", reason="ably-python is not installed (test extra)")

T = TypeVar("T")


def _client(stack: Stack, user: str, **options: Any) -> Any:
    return ably.AblyRest(
        auth_url=stack.token_url,
        auth_headers={"cookie": stack.login(user)},
        endpoint="127.0.0.1",
        port=stack.port,
        tls=False,
        **options,
    )


def _run(stack: Stack, user: str, body: Callable[[Any], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        rest = _client(stack, user, **options)
        try:
            return await body(rest)
        finally:
            await rest.close()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("auth_method", "client_id"), [("GET", None), ("POST", "alice")], ids=["GET", "POST-clientId"]
)
def test_authorize_publish_history(
    env_stack: Stack, unique: str, auth_method: str, client_id: str | None
) -> None:
    channel = f"py-{unique}"

    async def body(rest: Any) -> dict[str, Any]:
        details = await rest.auth.authorize()
        ch = rest.channels.get(channel)
        await ch.publish("text", "hello ✓")
        await ch.publish("binary", b"\x00\x01\xff")
        await ch.publish("object", {"a": [1, "two"], "b": None})
        page = await ch.history()
        return {
            "details": details,
            "binary": rest.options.use_binary_protocol,
            "history": [(m.name, m.data, m.client_id) for m in page.items],
            "time": await rest.time(),
        }

    options: dict[str, Any] = {"auth_method": auth_method, "auth_params": {"ttl": 120_000}}
    if client_id:
        options["client_id"] = client_id
    out = _run(env_stack, "alice", body, **options)
    details = out["details"]
    assert details.client_id == "alice"
    assert details.expires - details.issued == 120_000
    assert out["binary"] is True  # ably-python's default: msgpack
    assert out["history"] == [
        ("object", {"a": [1, "two"], "b": None}, "alice"),
        ("binary", b"\x00\x01\xff", "alice"),
        ("text", "hello ✓", "alice"),
    ]
    assert isinstance(out["time"], int)


def _error_code(stack: Stack, user: str, body: Callable[[Any], Awaitable[Any]], **opts: Any) -> int:
    with pytest.raises(ably.AblyException) as caught:
        _run(stack, user, body, **opts)
    return int(caught.value.code)


def test_refusals(env_stack: Stack, unique: str) -> None:
    """40160 for bob's publish, 40102 for a clientId that is not the user's."""

    async def publish(rest: Any) -> None:
        await rest.channels.get(f"py-{unique}").publish("x", "y")

    assert _error_code(env_stack, "bob", publish) == 40160

    async def authorize(rest: Any) -> None:
        await rest.auth.authorize()

    assert _error_code(env_stack, "alice", authorize, client_id="mallory") == 40102


def test_renewal_after_40142(
    clocked_stack: Stack, unique: str, tokenreq_recorder: Recorder
) -> None:
    """The provider refuses the expired token (40142); ably-python renews it
    through auth_url once and retries with the new token."""
    stack = clocked_stack
    assert stack.clock is not None
    assert stack.token_hits is not None
    clock = stack.clock
    channel = f"py-renew-{unique}"

    async def body(rest: Any) -> list[tuple[str, Any]]:
        first = await rest.auth.authorize()
        ch = rest.channels.get(channel)
        await ch.publish("before", "first token")
        clock.advance(first.expires - first.issued + 6_000)  # past exp + 5 s leeway
        await ch.publish("after", "renewed token")
        page = await ch.history()
        return [(m.name, m.client_id) for m in page.items]

    history = _run(stack, "alice", body, auth_params={"ttl": 10_000})
    assert history == [("after", "alice"), ("before", "alice")]
    assert stack.token_hits["/api/tokenreq/token"] == 2
    first, refused, retried = stack.bearer_tokens[:3]
    assert first == refused != retried
    signed = tokenreq_recorder.token_requests
    assert [(e.token_request, e.code, e.token) for e in tokenreq_recorder.exchanges] == [
        (signed[0], None, first),
        (signed[1], None, retried),
    ]
