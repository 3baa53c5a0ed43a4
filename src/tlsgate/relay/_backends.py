"""
Choosing and connecting to a backend: round robin with failover and passive
health.

Each connection starts at the next backend in turn; one that refuses, does
not connect within the timeout or fails its TLS handshake is skipped for the
next, and marked down for a short back-off that doubles with each further
failure (1 s up to 30 s). Backends marked down are not tried while others are
up; when every backend is down, the client is refused at once instead of
waiting on backends known to fail.

A backend given as an IP address over plain TCP (C{tcp:10.0.0.7:8080}) is
dialled directly (L{tlsgate._tcp.LeanClient}), with callbacks instead of
Deferreds: on a short-lived connection, Twisted's connector, its address
resolution and the Deferred chain of the endpoint cost more than the
C{connect()} itself. Every other backend goes through its endpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsgate._tcp import LeanClient
from tlsgate.errors import BackendUnavailable

#: The longest a failing backend is skipped before it is tried again.
MAX_BACKOFF = 30.0

#: Called once with the connected protocol, or with why none could be had.
Dialled = Callable[[IProtocol | None, Failure | None], None]


def direct_address(endpoint: IStreamClientEndpoint) -> tuple[str, int] | None:
    """
    The address of a plain TCP endpoint to an IP address (C{tcp:10.0.0.7:80}),
    which L{LeanClient} can dial without Twisted's connector; C{None} for
    anything else (a host name, a bind address, TLS, UNIX sockets).
    """
    if type(endpoint) not in (TCP4ClientEndpoint, TCP6ClientEndpoint):
        return None
    host = getattr(endpoint, "_host", None)
    port = getattr(endpoint, "_port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    if getattr(endpoint, "_bindAddress", None) is not None:
        return None
    try:
        ip_address(host)
    except ValueError:
        return None
    return (host, port)


def endpoint_timeout(endpoint: IStreamClientEndpoint) -> float:
    """
    A TCP endpoint's own connect timeout (C{tcp:...:timeout=N}, 30 s unless
    given), which a direct dial keeps; 0 when it has none.
    """
    timeout = getattr(endpoint, "_timeout", 0)
    return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 0.0


def _shortest(a: float, b: float) -> float:
    """The shorter of two timeouts, where 0 means none."""
    return min(a, b) if a and b else a or b


@dataclass(frozen=True)
class Backend:
    """
    A backend: its description (for logs and metrics) and its endpoint.

    @ivar address: where to dial it directly (L{direct_address}), when it is
        a plain TCP endpoint to an IP address and a reactor is at hand.
    @ivar timeout: the endpoint's own connect timeout (L{endpoint_timeout}),
        which a direct dial keeps beside the pool's.
    """

    description: str
    endpoint: IStreamClientEndpoint
    address: tuple[str, int] | None = field(default=None, compare=False)
    timeout: float = field(default=0.0, compare=False)

    @classmethod
    def of(cls, description: str, endpoint: IStreamClientEndpoint) -> Backend:
        """A backend dialled directly when its endpoint allows (L{direct_address})."""
        return cls(
            description, endpoint, direct_address(endpoint), endpoint_timeout(endpoint)
        )


class BackendPool:
    """
    Connects to one of several backends, round robin, failing over in order.

    @param connect_timeout: seconds one attempt may take; 0 means no limit
        beyond the endpoint's own.
    @param reactor: the reactor to dial backends that have an C{address}
        with (L{LeanClient}); without one, every backend goes through its
        endpoint.
    @param c_sockets: dial those with CPython's C socket type (see
        L{LeanClient.dial}): for the gateway's own relay, whose backend
        protocol never asks its transport for the socket. Off, a protocol's
        C{transport.getHandle()} is a C{socket.socket}, as on Twisted's
        transports.
    """

    _log = Logger()

    def __init__(
        self,
        backends: Sequence[Backend],
        clock: IReactorTime,
        connect_timeout: float = 5.0,
        name: str = "default",
        reactor: Any = None,
        c_sockets: bool = False,
    ) -> None:
        if not backends:
            raise ValueError("a backend pool needs at least one backend")
        self.backends = tuple(backends)
        self.name = name
        self._clock = clock
        self._reactor = reactor
        self._c_sockets = c_sockets
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
        cancel: list[Callable[[], None]] = []
        result: Deferred[IProtocol] = Deferred(lambda _: cancel[0]())

        def done(protocol: IProtocol | None, reason: Failure | None) -> None:
            if reason is not None:
                result.errback(reason)
            else:
                assert protocol is not None
                result.callback(protocol)

        cancel.append(self.dial(factory, done))
        return result

    def dial(self, factory: IProtocolFactory, done: Dialled) -> Callable[[], None]:
        """
        L{connect} without Deferreds, for the relay's per-connection path:
        C{done} is called once, with the protocol or with the failure
        (L{BackendUnavailable}); the result cancels the walk (then C{done}
        is not called).
        """
        n = len(self.backends)
        start = self._next
        self._next = (start + 1) % n
        now = self._clock.seconds()
        down = self._down_until
        if not down:
            order = self.backends[start:] + self.backends[:start]
        else:
            order = tuple(
                b
                for i in range(n)
                if down.get((b := self.backends[(start + i) % n]).description, 0) <= now
            )
        if not order:
            done(
                None,
                Failure(
                    BackendUnavailable(
                        "every backend is marked down after failing; retrying each"
                        " after its back-off"
                    )
                ),
            )
            return _nothing
        return _Walk(self, order, factory, done).cancel

    def is_down(self, description: str) -> bool:
        return self._down_until.get(description, 0) > self._clock.seconds()

    def _succeeded(self, backend: Backend) -> None:
        if self._down_until:
            self._backoff.pop(backend.description, None)
            self._down_until.pop(backend.description, None)

    def _failed(self, backend: Backend, reason: Failure) -> str:
        self.connect_failures[backend.description] += 1
        backoff = min(MAX_BACKOFF, self._backoff.get(backend.description, 0) * 2 or 1.0)
        self._backoff[backend.description] = backoff
        self._down_until[backend.description] = self._clock.seconds() + backoff
        if reason.check(TimeoutError, ConnectTimeoutError):
            why = f"no connection within {_shortest(self._timeout, backend.timeout):g}s"
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


def _nothing() -> None:
    """Cancels a walk that ended before it began."""


class _Walk:
    """One connection's walk through the backends, cancellable as a whole."""

    __slots__ = (
        "_current",
        "_done",
        "_factory",
        "_index",
        "_order",
        "_pool",
        "_reasons",
    )

    def __init__(
        self,
        pool: BackendPool,
        order: Sequence[Backend],
        factory: IProtocolFactory,
        done: Dialled,
    ) -> None:
        self._pool = pool
        self._order = order
        self._factory = factory
        self._done: Dialled | None = done
        self._reasons: list[str] = []
        self._current: Callable[[], None] | None = None
        self._index = 0
        self._try(0)

    def cancel(self) -> None:
        if self._done is None:
            return
        self._done = None
        current, self._current = self._current, None
        if current is not None:
            current()

    def _try(self, index: int) -> None:
        if self._done is None:
            return
        if index == len(self._order):
            done, self._done = self._done, None
            done(
                None,
                Failure(
                    BackendUnavailable(
                        "no backend accepted the connection: "
                        + "; ".join(self._reasons)
                    )
                ),
            )
            return
        self._index = index
        backend = self._order[index]
        pool = self._pool
        if backend.address is not None and pool._reactor is not None:
            client = LeanClient.dial(
                pool._reactor, backend.address, self._factory,
                lambda transport, reason: self._ended(
                    index, None if transport is None else transport.protocol, reason
                ),
                _shortest(pool._timeout, backend.timeout), pool._clock,
                pool._c_sockets,
            )  # fmt: skip
            if self._index == index and self._done is not None:
                self._current = client.cancel
            return
        d = backend.endpoint.connect(self._factory)
        if pool._timeout > 0:
            d.addTimeout(pool._timeout, pool._clock)
        self._current = d.cancel
        d.addCallbacks(
            lambda protocol: self._ended(index, protocol, None),
            lambda reason: self._ended(index, None, reason),
        )

    def _ended(
        self, index: int, protocol: IProtocol | None, reason: Failure | None
    ) -> None:
        self._current = None
        if self._done is None:
            return  # cancelled (a cancelled Deferred still errbacks)
        backend = self._order[index]
        if reason is None:
            self._pool._succeeded(backend)
            done, self._done = self._done, None
            done(protocol, None)
            return
        self._reasons.append(self._pool._failed(backend, reason))
        self._try(index + 1)
