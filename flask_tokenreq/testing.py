"""pytest fixtures for testing an app that issues or accepts TokenRequests.

A pytest plugin, registered as the ``pytest11`` entry point ``tokenreq``: it
is loaded wherever flask-tokenreq is installed and does nothing until a test
asks for one of its fixtures. It imports no storage driver and changes no
state on import.

- ``tokenreq_clock``: a :class:`ManualClock` (ms). While a test uses it,
  :func:`flask_tokenreq.clock.now_ms` answers its time in the whole process,
  so issuers, providers, token services and nonce stores built without an
  explicit ``now_ms`` follow it. It starts at the wall-clock time and moves
  only with :meth:`~ManualClock.advance` and :meth:`~ManualClock.set`.
- ``tokenreq_key``: a fresh key ``appId.keyId:secret`` (a 43-character secret).
- ``tokenreq_sign(**params)``: a :class:`~flask_tokenreq.TokenRequest` signed
  with ``tokenreq_key`` at ``tokenreq_clock``; ``params`` are those of
  :func:`~flask_tokenreq.sign_token_request` (plus ``key=`` for another key).
- ``tokenreq_recorder``: a :class:`Recorder` of every TokenRequest an issuer
  signed and every exchange a provider handled, in order, built on the
  package's signals (:mod:`flask_tokenreq.signals`).

See ``docs/testing.md``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .errors import TokenReqError
    from .tokenrequest import TokenRequest
    from .tokens import IssuedToken

__all__ = ["Exchange", "ManualClock", "Recorder"]


class ManualClock:
    """Milliseconds since the epoch that move only when told to.

    Call it for the time (``clock()``), as every ``now_ms`` in the package is
    called. ``start`` defaults to the wall-clock time.
    """

    def __init__(self, start: int | None = None) -> None:
        self._ms = _whole_ms(time.time_ns() // 1_000_000 if start is None else start, "start")

    def __call__(self) -> int:
        return self._ms

    def advance(self, ms: int) -> int:
        """Move the clock by ``ms`` (negative moves it back); returns the new time."""
        self._ms = _whole_ms(self._ms + _whole_ms(ms, "ms", signed=True), "the new time")
        return self._ms

    def set(self, ms: int) -> int:
        """Set the clock to ``ms`` since the epoch; returns it."""
        self._ms = _whole_ms(ms, "ms")
        return self._ms

    def __repr__(self) -> str:
        return f"ManualClock({self._ms})"


def _whole_ms(value: object, what: str, *, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a whole number of milliseconds")
    if value < 0 and not signed:
        raise ValueError(f"{what} must not be before the epoch")
    return value


@dataclass(frozen=True)
class Exchange:
    """One exchange a provider handled: ``POST /keys/<keyName>/requestToken``.

    ``status`` is the HTTP status of the answer and ``code`` its Ably error
    code (``None`` when the TokenRequest was accepted). ``token_request`` is
    ``None`` when the body was not a TokenRequest. ``details`` are the
    TokenDetails the client received (accepted) and ``message`` the error
    message (refused).
    """

    token_request: TokenRequest | None
    key_name: str
    status: int
    code: int | None
    message: str | None = None
    details: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        return self.code is None

    @property
    def token(self) -> str | None:
        """The token the client received, if the exchange was accepted."""
        return None if self.details is None else str(self.details["token"])


class Recorder:
    """What the apps under test did, in order, as the package's signals report it.

    ``token_requests``: every TokenRequest an issuer signed (``format=token``
    included). ``exchanges``: every :class:`Exchange` a provider's endpoint
    handled, accepted or refused. Apps in this process only; a server in
    another process sends its signals there.
    """

    def __init__(self) -> None:
        self.token_requests: list[TokenRequest] = []
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._connected: list[tuple[Any, Callable[..., None]]] = []

    @property
    def refusals(self) -> list[Exchange]:
        """The exchanges that were refused."""
        return [e for e in self.exchanges if not e.accepted]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        with self._lock:
            self.token_requests.clear()
            self.exchanges.clear()

    def connect(self) -> None:
        """Start recording (the fixture does this)."""
        from . import signals

        for signal, receiver in (
            (signals.token_request_signed, self._signed),
            (signals.token_issued, self._issued),
            (signals.token_refused, self._refused),
        ):
            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))

    def disconnect(self) -> None:
        """Stop recording (the fixture does this at teardown)."""
        while self._connected:
            signal, receiver = self._connected.pop()
            signal.disconnect(receiver)

    def _signed(self, sender: object, *, token_request: TokenRequest, **extra: Any) -> None:
        with self._lock:
            self.token_requests.append(token_request)

    def _issued(
        self, sender: object, *, token_request: TokenRequest, token: IssuedToken, **extra: Any
    ) -> None:
        exchange = Exchange(token_request, token.key_name, 200, None, details=token.token_details())
        with self._lock:
            self.exchanges.append(exchange)

    def _refused(
        self,
        sender: object,
        *,
        token_request: TokenRequest | None,
        key_name: str,
        error: TokenReqError,
        **extra: Any,
    ) -> None:
        exchange = Exchange(token_request, key_name, error.status, error.code, error.message)
        with self._lock:
            self.exchanges.append(exchange)

    def __repr__(self) -> str:
        return (
            f"<Recorder token_requests={len(self.token_requests)} "
            f"exchanges={[(e.status, e.code) for e in self.exchanges]}>"
        )


# -- the fixtures ----------------------------------------------------------------------


@pytest.fixture
def tokenreq_clock() -> Iterator[ManualClock]:
    """The process clock for this test: a :class:`ManualClock` starting now."""
    from .clock import override

    manual = ManualClock()
    with override(manual):
        yield manual


@pytest.fixture
def tokenreq_key() -> str:
    """A fresh key ``appId.keyId:secret`` with a 256-bit (43-character) secret."""
    return f"test{secrets.token_hex(3)}.{secrets.token_hex(3)}:{secrets.token_urlsafe(32)}"


@pytest.fixture
def tokenreq_sign(tokenreq_key: str, tokenreq_clock: ManualClock) -> Callable[..., TokenRequest]:
    """``sign(**params)``: a TokenRequest signed with ``tokenreq_key`` at ``tokenreq_clock``.

    ``params`` are those of :func:`flask_tokenreq.sign_token_request`
    (``ttl``, ``capability``, ``client_id``, ``timestamp``, ``nonce``);
    ``key=`` signs with another key.
    """
    from .tokenrequest import sign_token_request

    def sign(*, key: str | None = None, **params: Any) -> TokenRequest:
        params.setdefault("now", tokenreq_clock)
        return sign_token_request(tokenreq_key if key is None else key, **params)

    return sign


@pytest.fixture
def tokenreq_recorder() -> Iterator[Recorder]:
    """A :class:`Recorder` connected to the package's signals for this test."""
    recorder = Recorder()
    recorder.connect()
    try:
        yield recorder
    finally:
        recorder.disconnect()
