"""
Choosing and connecting to a backend: round robin with failover and passive
health.

Each connection starts at the next backend in turn; one that refuses, does
not connect within the timeout or fails its TLS handshake is skipped for the
next, and marked down for a short back-off that doubles with each further
failure (1 s up to 30 s). Backends marked down are not tried while others are
up; when every backend is down, the client is refused at once instead of
waiting on backends known to fail.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsgate.errors import BackendUnavailable

#: The longest a failing backend is skipped before it is tried again.
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Backend:
    """A backend: its description (for logs and metrics) and its endpoint."""

    description: str
    endpoint: IStreamClientEndpoint


class BackendPool:
    """
    Connects to one of several backends, round robin, failing over in order.

    @param connect_timeout: seconds one attempt may take; 0 means no limit
        beyond the endpoint's own.
    """

    _log = Logger()

    def __init__(
        self,
        backends: Sequence[Backend],
        clock: IReactorTime,
        connect_timeout: float = 5.0,
        name: str = "default",
    ) -> None:
        if not backends:
            raise ValueError("a backend pool needs at least one backend")
        self.backends = tuple(backends)
        self.name = name
        self._clock = clock
        self._timeout = connect_timeout
        self._next = 0
        #: Failed connection attempts per backend description.
        self.connect_failures: Counter[str] = Counter()
        self._down_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect C{factory} to the first backend, in turn, that accepts.

        The result fails with L{BackendUnavailable} when every backend failed,
        and can be cancelled (the attempt under way is cancelled with it).
        """
        n = len(self.backends)
        start = self._next
        self._next = (start + 1) % n
        now = self._clock.seconds()
        order = [
            b
            for i in range(n)
            if self._down_until.get(
                (b := self.backends[(start + i) % n]).description, 0
            )
            <= now
        ]
        if not order:
            return fail(
                BackendUnavailable(
                    "every backend is marked down after failing; retrying each after"
                    " its back-off"
                )
            )
        return _Attempt(self, order, factory).result

    def is_down(self, description: str) -> bool:
        return self._down_until.get(description, 0) > self._clock.seconds()

    def _succeeded(self, backend: Backend) -> None:
        self._backoff.pop(backend.description, None)
        self._down_until.pop(backend.description, None)

    def _failed(self, backend: Backend, reason: Failure) -> str:
        self.connect_failures[backend.description] += 1
        backoff = min(MAX_BACKOFF, self._backoff.get(backend.description, 0) * 2 or 1.0)
        self._backoff[backend.description] = backoff
        self._down_until[backend.description] = self._clock.seconds() + backoff
        if reason.check(TimeoutError):
            why = f"no connection within {self._timeout:g}s"
        else:
            why = reason.getErrorMessage()
        self._log.warn(
            "{listener}: backend {backend} failed: {why}; skipped for {backoff:g}s",
            backoff=self._backoff[backend.description],
            listener=self.name,
            backend=backend.description,
            why=why,
            event="backend_connect_failed",
        )
        return f"{backend.description}: {why}"


class _Attempt:
    """One connection's walk through the backends, cancellable as a whole."""

    def __init__(
        self, pool: BackendPool, order: list[Backend], factory: IProtocolFactory
    ) -> None:
        self._pool = pool
        self._order = order
        self._factory = factory
        self._reasons: list[str] = []
        self._current: Deferred[IProtocol] | None = None
        self._cancelled = False
        self.result: Deferred[IProtocol] = Deferred(self._cancel)
        self._try(0)

    def _cancel(self, _: Deferred[IProtocol]) -> None:
        self._cancelled = True
        if self._current is not None:
            self._current.cancel()

    def _try(self, index: int) -> None:
        if self._cancelled:
            return
        if index == len(self._order):
            self.result.errback(
                BackendUnavailable(
                    "no backend accepted the connection: " + "; ".join(self._reasons)
                )
            )
            return
        backend = self._order[index]
        d = backend.endpoint.connect(self._factory)
        if self._pool._timeout > 0:
            d.addTimeout(self._pool._timeout, self._pool._clock)
        self._current = d

        def connected(protocol: IProtocol) -> None:
            self._current = None
            self._pool._succeeded(backend)
            self.result.callback(protocol)

        def failed(reason: Failure) -> None:
            self._current = None
            if self._cancelled:
                return
            self._reasons.append(self._pool._failed(backend, reason))
            self._try(index + 1)

        d.addCallbacks(connected, failed)
