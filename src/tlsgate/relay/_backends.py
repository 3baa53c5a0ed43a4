"""
Choosing and connecting to a backend: round robin with failover.

Each connection starts at the next backend in turn; one that refuses or does
not connect within the timeout is skipped for the next, until all were tried.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsgate.errors import BackendUnavailable


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

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect C{factory} to the first backend, in turn, that accepts.

        The result fails with L{BackendUnavailable} when every backend failed,
        and can be cancelled (the attempt under way is cancelled with it).
        """
        n = len(self.backends)
        start = self._next
        self._next = (start + 1) % n
        order = [self.backends[(start + i) % n] for i in range(n)]
        return _Attempt(self, order, factory).result

    def _failed(self, backend: Backend, reason: Failure) -> str:
        self.connect_failures[backend.description] += 1
        if reason.check(TimeoutError):
            why = f"no connection within {self._timeout:g}s"
        else:
            why = reason.getErrorMessage()
        self._log.warn(
            "{listener}: backend {backend} failed: {why}",
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
            self.result.callback(protocol)

        def failed(reason: Failure) -> None:
            self._current = None
            if self._cancelled:
                return
            self._reasons.append(self._pool._failed(backend, reason))
            self._try(index + 1)

        d.addCallbacks(connected, failed)
