"""The endpoint class: any server endpoint, with tlsgate's TLS and limits on top."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from tlsgate._assembly import TLSStack
from tlsgate.certs import ReloadingContextFactory
from tlsgate.certs._expiry import ExpiryWarnings
from tlsgate.tracker import ConnectionTracker, Limits


@implementer(IListeningPort)
class _Port:
    """
    The listening port as the caller sees it: stopping it also takes it
    from the tracker, which must not resume accepting on a closed socket.
    """

    def __init__(
        self, port: IListeningPort, stack: TLSStack, expiry: ExpiryWarnings
    ) -> None:
        self._port = port
        self._stack = stack
        self._expiry = expiry

    def startListening(self) -> None:
        self._port.startListening()
        self._stack.listening(self._port)
        self._expiry.start()

    def stopListening(self) -> Deferred[None] | None:
        self._stack.listening(None)
        self._expiry.stop()
        return self._port.stopListening()

    def getHost(self) -> IAddress:
        return self._port.getHost()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


@implementer(IStreamServerEndpoint)
class ReloadingTLSServerEndpoint:
    """
    Listens on C{inner} with TLS from a reloading context factory and every
    connection limit, wired as the gateway wires its listeners: connections
    are tagged with the certificate generation they were made under,
    C{rotation_grace} closes older ones after a swap, C{max_connections}
    pauses accepting on the port, and a certificate nearing its expiry is
    warned about (30, 7 and 1 days before) while the port listens.

    The certificates are loaded by whoever builds C{contexts} (at once, so
    that unusable files fail there, naming them); L{tlsgate.endpoint.
    endpoint_from_description} builds everything from a C{tlsgate:} string.

    @ivar trackers: the connection tracker of each C{listen} so far, for
        status pages, metrics and C{drain}.
    """

    def __init__(
        self,
        inner: IStreamServerEndpoint,
        contexts: ReloadingContextFactory,
        *,
        clock: IReactorTime,
        limits: Limits | None = None,
        name: str = "tlsgate",
    ) -> None:
        self.inner = inner
        self.contexts = contexts
        self.clock = clock
        self.limits = limits or Limits()
        self.name = name
        self.trackers: list[ConnectionTracker] = []

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        stack = TLSStack.around(
            protocolFactory, self.contexts, self.limits, self.clock, name=self.name
        )
        self.trackers.append(stack.tracker)

        expiry = ExpiryWarnings(self.contexts, self.clock)

        def listening(port: IListeningPort) -> IListeningPort:
            stack.listening(port)
            expiry.start()
            return _Port(port, stack, expiry)

        return self.inner.listen(stack.factory).addCallback(listening)
