"""
The running parts of one gateway process: its listeners and the service that
starts, drains and stops them.

Assembly (from a config to these parts) is in L{tlsgate.service}; the admin
API reads them through L{tlsgate.admin.LocalView}. Neither is imported here,
so the dependency graph runs one way.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsgate._batch import linger
from tlsgate._dispatch import lean_dispatch
from tlsgate._drain import StagedDrain
from tlsgate._leantls import LeanTLS
from tlsgate._sdnotify import INotifier, NoNotifier
from tlsgate._tcp import use_lean_transports
from tlsgate.certs import ReloadingContextFactory
from tlsgate.certs._expiry import ExpiryWarnings
from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.errors import ListenError
from tlsgate.relay import BackendPool
from tlsgate.sni import SniDirectory
from tlsgate.tracker import ConnectionTracker


@implementer(IProtocolFactory)
class _SwitchFactory:
    """
    The factory a port listens with, delegating to one that can be replaced:
    a config reload gives new connections new settings on the same socket,
    while connections already open keep the parts they were made with.
    """

    def __init__(self, target: IProtocolFactory) -> None:
        self.target = target

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        return self.target.buildProtocol(addr)

    @property
    def lean_tls(self) -> LeanTLS | None:
        """How the port makes one-object TLS connections for the target, if it may."""
        return getattr(self.target, "lean_tls", None)

    def doStart(self) -> None:
        self.target.doStart()

    def doStop(self) -> None:
        self.target.doStop()


class ListenerService(Service):
    """
    Listens on one endpoint while running, and hands the port to the tracker
    so that C{max_connections} can pause accepting.

    It binds in C{privilegedStartService}, before twistd drops privileges
    (C{-u}/C{-g}), so ports below 1024 work as with Twisted's own services. A
    port that cannot be bound raises L{ListenError} at once, naming the
    endpoint, rather than logging an unhandled error later.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        tracker: ConnectionTracker | None = None,
        description: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._switch = _SwitchFactory(factory)
        self.tracker = tracker
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._waiting: list[Deferred[IListeningPort]] = []
        self.description = description or repr(endpoint)

    @property
    def listening(self) -> bool:
        return self.port is not None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self._listen()

    def replace_factory(
        self, factory: IProtocolFactory, tracker: ConnectionTracker | None
    ) -> None:
        """New connections from now on are built by C{factory} (a config reload)."""
        if self.tracker is not None:
            self.tracker.port = None
        self.factory, self._switch.target, self.tracker = factory, factory, tracker
        if tracker is not None:
            tracker.port = self.port

    def _listen(self) -> None:
        d = self.endpoint.listen(self._switch)
        self._listening = d
        failures: list[Failure] = []
        d.addCallbacks(self._listened, failures.append)
        if failures:
            raise ListenError(
                f"cannot listen on {self.description}: {failures[0].getErrorMessage()}"
            )

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        use_lean_transports(port)
        if self.tracker is not None:
            self.tracker.port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)
        return port

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once it listens (at once if it does)."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if self.tracker is not None:
            self.tracker.port = None
        if port is not None:
            self._listening = None
            result = port.stopListening()
            return result if isinstance(result, Deferred) else None
        if self._listening is not None:
            self._listening.cancel()
        self._listening = None
        return None


@dataclass(frozen=True)
class Listener:
    """The live parts of one listener, for embedding code and status pages."""

    config: ListenerConfig
    contexts: ReloadingContextFactory
    pool: BackendPool
    tracker: ConnectionTracker
    service: ListenerService
    expiry: ExpiryWarnings
    #: The SNI directory the listener's servername callback consults.
    sni: SniDirectory | None = None


class GatewayService(MultiService):
    """
    The whole gateway: one child service per listener; stopping drains.

    @ivar notifier: told when the gateway is ready and when it drains (the
        twistd plugin gives it a systemd notifier under C{NOTIFY_SOCKET}).
    """

    def __init__(
        self,
        config: GatewayConfig,
        listeners: dict[str, Listener],
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.listeners = listeners
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.clock = clock
        self.notifier: INotifier = NoNotifier()
        #: The admin endpoint's service, when configured; it stays up while
        #: draining so that /readyz can say so.
        self.admin: ListenerService | None = None
        #: Listeners replaced or removed by a config reload whose connections
        #: are still open; drained with the rest, dropped once empty.
        self.retired: list[Listener] = []
        self._stop = StagedDrain(
            clock, self._announce_drain, self.stop_accepting, self._finish
        )

    @property
    def draining(self) -> bool:
        """From the start of a drain on (C{/readyz} then answers 503)."""
        return self._stop.started

    def _trackers(self) -> list[ConnectionTracker]:
        self.retired = [r for r in self.retired if r.tracker.connections]
        return [lsn.tracker for lsn in self.listeners.values()] + [
            r.tracker for r in self.retired
        ]

    def drain(
        self, timeout: float | None = None, delay: float | None = None
    ) -> Deferred[None]:
        """
        Drain: readiness turns false at once; listeners keep accepting for
        C{delay} (default: the config's C{drain_delay}), then stop; open
        connections get C{timeout} (default: C{drain_timeout}; 0: no limit)
        and the rest are closed gracefully. Fires once no connection is left.
        A drain already started is joined, and a shorter C{timeout} than its
        own cuts it short (a worker retired by a new generation, then stopped).
        """
        return self._stop.start(
            self.config.drain_delay if delay is None else delay,
            self.config.drain_timeout if timeout is None else timeout,
        )

    def _announce_drain(self) -> None:
        self.notifier.stopping()

    def stop_accepting(self) -> Deferred[Any]:
        """Close every listener's port; fires once all are closed."""
        return DeferredList(
            [
                d
                for listener in self.listeners.values()
                if (d := listener.service.stopService()) is not None
            ]
        )

    def _finish(self, timeout: float) -> Awaitable[object]:
        return DeferredList([tracker.drain(timeout) for tracker in self._trackers()])

    def startService(self) -> None:
        # The gateway's own reactor dispatches events without a logging
        # context each (tlsgate logs by namespace): see tlsgate._dispatch.
        lean_dispatch(self.clock)
        # Its shared timers keep their delayed call between connections.
        linger(self.clock)
        super().startService()
        for listener in self.listeners.values():
            listener.expiry.start()
        services = [lsn.service for lsn in self.listeners.values()]
        if self.admin is not None:
            services.append(self.admin)
        DeferredList(
            [s.when_listening() for s in services], fireOnOneErrback=True
        ).addCallbacks(lambda _: self._ready(), lambda _: None)

    def _ready(self) -> None:
        if not self.draining:
            self.notifier.ready()
            self.notifier.start_watchdog()

    def stopService(self) -> Deferred[None]:
        for listener in self.listeners.values():
            listener.expiry.stop()

        async def stop() -> None:
            await self.drain()
            await super(GatewayService, self).stopService()
            self.notifier.stop_watchdog()

        return ensureDeferred(stop())
