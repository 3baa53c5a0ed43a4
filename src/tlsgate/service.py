"""
Wiring: a parsed L{GatewayConfig} becomes a running Twisted C{IService}.

One child service per listener; each owns its reloading context factory, its
backend pool, its connection tracker and its listening port. Certificates
are loaded when the service is built, so unusable files stop start-up with a
clear error. Stopping the service drains (L{tlsgate._drain}): readiness turns
false, listeners keep accepting for C{drain_delay}, then stop; open
connections get C{drain_timeout} to finish, the rest are closed gracefully.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsgate._assembly import TLSStack
from tlsgate._assembly import build_contexts as build_contexts  # re-exported
from tlsgate._drain import StagedDrain
from tlsgate._sdnotify import INotifier, NoNotifier
from tlsgate.certs import ReloadingContextFactory
from tlsgate.certs._expiry import ExpiryWarnings
from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.errors import ListenError
from tlsgate.relay import Backend, BackendPool, RelayFactory
from tlsgate.tracker import ConnectionTracker
from tlsgate.upstream import BackendTLS, TLSBackendEndpoint


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
            clock, self._announce_drain, self._close_listeners, self._finish
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
        A drain already started is joined, not restarted.
        """
        return self._stop.start(
            self.config.drain_delay if delay is None else delay,
            self.config.drain_timeout if timeout is None else timeout,
        )

    def _announce_drain(self) -> None:
        self.notifier.stopping()

    def _close_listeners(self) -> Awaitable[object]:
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


def server_endpoint(
    reactor: IReactorCore, description: str, where: str
) -> IStreamServerEndpoint:
    """
    C{serverFromString}, with a socket-activation mistake reported as one
    line naming C{where} (file, section and key) instead of Twisted's
    C{IndexError} or C{KeyError}.

    Twisted adopts inherited sockets only when C{LISTEN_FDS} comes with
    matching C{LISTEN_FDNAMES} (systemd sets both; C{systemd-socket-activate}
    sets the names only with C{--fdname}); otherwise it sees none at all.

    @raise ListenError: when the C{systemd:} socket asked for was not passed.
    """
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (IndexError, KeyError) as e:
        if description.split(":", 1)[0].strip().lower() != "systemd":
            raise
        which = f"named {e.args[0]!r}" if isinstance(e, KeyError) else "at that index"
        raise ListenError(
            f"{where} = {description}: no socket {which} was passed by socket"
            " activation (Twisted needs LISTEN_FDS with matching LISTEN_FDNAMES:"
            " FileDescriptorName= in the .socket unit, or"
            " systemd-socket-activate --fdname=NAME)"
        ) from None
    return endpoint


def _where(config: GatewayConfig, section: str, key: str) -> str:
    return f"{config.source or '<config>'}: [{section}] {key}"


def endpoint_host(description: str) -> str | None:
    """The host of a C{tcp:HOST:PORT} (or C{host=}) client endpoint description."""
    kind, _, rest = description.partition(":")
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", rest)]
    for part in parts:
        if part.startswith("host="):
            return part[len("host=") :]
    positional = [p for p in parts if "=" not in p]
    if kind.lower() in ("tcp", "tcp6", "host") and positional:
        return positional[0]
    return None


def build_pool(config: ListenerConfig, reactor: IReactorCore) -> BackendPool:
    """
    A listener's backends, over TLS when C{backend_tls} is on.

    @raise tlsgate.errors.CertificateError: when the backend CA or client
        certificate files cannot be used.
    """
    tls = None
    if config.backend_tls:
        tls = BackendTLS(
            config.backend_ca, config.backend_cert, config.backend_key, name=config.name
        )
    backends = []
    for d in config.backends:
        endpoint: IStreamClientEndpoint = clientFromString(reactor, d)
        if tls is not None:
            host = config.backend_server_name or endpoint_host(d)
            assert host is not None  # the config parser insists on one
            endpoint = TLSBackendEndpoint(endpoint, tls, host, description=d)
        backends.append(Backend(d, endpoint))
    clock: IReactorTime = reactor  # type: ignore[assignment]
    return BackendPool(
        backends, clock=clock, connect_timeout=config.backend_connect_timeout,
        name=config.name,
    )  # fmt: skip


def build_listener(
    config: ListenerConfig, reactor: IReactorCore, where: str | None = None
) -> Listener:
    """
    Build one listener's parts.

    @param where: how errors name its C{listen} key (file, section, key).
    @raise tlsgate.errors.CertificateError: when its certificate cannot be served.
    @raise tlsgate.errors.ListenError: when a C{systemd:} socket is missing.
    """
    contexts = build_contexts(config)
    clock: IReactorTime = reactor  # type: ignore[assignment]
    pool = build_pool(config, reactor)
    stack = TLSStack.around(
        RelayFactory(pool, proxy_protocol=config.proxy_protocol),
        contexts, config.limits, clock, name=config.name,
    )  # fmt: skip
    tracker = stack.tracker
    service = ListenerService(
        server_endpoint(
            reactor, config.listen, where or f"[listener:{config.name}] listen"
        ),
        stack.factory,
        tracker,
        config.listen,
    )
    service.setName(f"listener:{config.name}")
    expiry = ExpiryWarnings(contexts, clock)
    return Listener(config, contexts, pool, tracker, service, expiry)


def build_service(
    config: GatewayConfig, reactor: IReactorCore | None = None
) -> IService:
    """
    The gateway for C{config} as an C{IService}, ready for C{startService}.

    @param reactor: the reactor to listen and connect with (the global one by
        default).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    assert reactor is not None
    listeners = {
        lc.name: build_listener(
            lc, reactor, _where(config, f"listener:{lc.name}", "listen")
        )
        for lc in config.listeners
    }
    clock: IReactorTime = reactor  # type: ignore[assignment]
    gateway = GatewayService(config, listeners, clock)
    for listener in listeners.values():
        listener.service.setServiceParent(gateway)
    if config.admin:
        from twisted.web.server import Site

        from tlsgate.admin import AdminRoot, token_file

        site = Site(AdminRoot(gateway, token_file(config.admin_token_file)))
        site.displayTracebacks = False
        admin = ListenerService(
            server_endpoint(reactor, config.admin, _where(config, "gateway", "admin")),
            site,
            description=config.admin,
        )
        admin.setName("admin")
        admin.setServiceParent(gateway)
        gateway.admin = admin
    return gateway
