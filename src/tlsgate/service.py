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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)

from tlsgate._assembly import (
    Certificates,
    TLSStack,
    build_certificates,
    build_contexts,
)
from tlsgate._gateway import GatewayService, Listener, ListenerService
from tlsgate.certs._expiry import ExpiryWarnings
from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.errors import ListenError
from tlsgate.relay import Backend, BackendPool, RelayFactory
from tlsgate.tracker import ListenerCounts
from tlsgate.upstream import BackendTLS, TLSBackendEndpoint

if TYPE_CHECKING:
    from tlsgate.admin import IGatewayView

__all__ = [
    "Certificates",
    "EndpointFor",
    "GatewayService",
    "Listener",
    "ListenerService",
    "build_admin",
    "build_certificates",
    "build_contexts",
    "build_listener",
    "build_pool",
    "build_service",
    "endpoint_host",
    "server_endpoint",
]

#: How a listener's server endpoint is made: from its C{listen} description
#: by default; a worker process adopts the socket its supervisor bound.
EndpointFor = Callable[[ListenerConfig, IReactorCore], IStreamServerEndpoint]


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


def _where(config: GatewayConfig | None, section: str, key: str) -> str:
    return (config or GatewayConfig(listeners=())).where(section, key)


def _listen_endpoint(
    config: ListenerConfig, reactor: IReactorCore
) -> IStreamServerEndpoint:
    return server_endpoint(
        reactor, config.listen, _where(None, f"listener:{config.name}", "listen")
    )


def _named_in(config: GatewayConfig) -> EndpointFor:
    """L{_listen_endpoint}, with errors naming C{config}'s file."""

    def endpoint_for(
        lc: ListenerConfig, reactor: IReactorCore
    ) -> IStreamServerEndpoint:
        where = _where(config, f"listener:{lc.name}", "listen")
        return server_endpoint(reactor, lc.listen, where)

    return endpoint_for


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
    A listener's backends, over TLS when C{backend_tls} is on. Those given as
    C{tcp:IP:PORT} are dialled with CPython's C socket type (L{BackendPool}'s
    C{c_sockets}): the relay's backend protocol never asks for the socket.

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
        backends.append(Backend.of(d, endpoint))
    clock: IReactorTime = reactor  # type: ignore[assignment]
    return BackendPool(
        backends, clock=clock, connect_timeout=config.backend_connect_timeout,
        name=config.name, reactor=reactor, c_sockets=True,
    )  # fmt: skip


def build_listener(
    config: ListenerConfig,
    reactor: IReactorCore,
    *,
    certificates: Certificates | None = None,
    endpoint_for: EndpointFor = _listen_endpoint,
    shared: ListenerCounts | None = None,
) -> Listener:
    """
    Build one listener's parts.

    @param certificates: its context factory and SNI directory, when
        already built (a worker inherits the ones its fork server made).
    @param endpoint_for: makes the listening endpoint.
    @param shared: connection counts over every worker process, for caps
        that hold gateway-wide.
    @raise tlsgate.errors.CertificateError: when its certificate cannot be served.
    @raise tlsgate.errors.ListenError: when a C{systemd:} socket is missing.
    """
    if certificates is None:
        certificates = build_certificates(config)
    contexts = certificates.contexts
    clock: IReactorTime = reactor  # type: ignore[assignment]
    pool = build_pool(config, reactor)
    stack = TLSStack.around(
        RelayFactory(pool, proxy_protocol=config.proxy_protocol),
        contexts, config.limits, clock, name=config.name, shared=shared,
        half_close=True, attribute_fallback=False,
    )  # fmt: skip
    tracker = stack.tracker
    service = ListenerService(
        endpoint_for(config, reactor), stack.factory, tracker, config.listen
    )
    service.setName(f"listener:{config.name}")
    expiry = ExpiryWarnings(contexts, clock)
    return Listener(config, contexts, pool, tracker, service, expiry, certificates.sni)


def build_service(
    config: GatewayConfig,
    reactor: IReactorCore | None = None,
    *,
    certificates: Mapping[str, Certificates] | None = None,
    endpoint_for: EndpointFor = _listen_endpoint,
    admin: bool = True,
    shared: Mapping[str, ListenerCounts] | None = None,
) -> IService:
    """
    The gateway for C{config} as an C{IService}, ready for C{startService}.

    @param reactor: the reactor to listen and connect with (the global one by
        default).
    @param certificates: context factories and SNI directories already
        built, by listener name.
    @param endpoint_for: makes each listener's endpoint.
    @param shared: per listener name, counts over every worker process.
    @param admin: serve the admin endpoint if configured (a worker process
        does not: its supervisor serves the one admin endpoint).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    assert reactor is not None
    built = certificates or {}
    if endpoint_for is _listen_endpoint:
        endpoint_for = _named_in(config)
    listeners = {
        lc.name: build_listener(
            lc,
            reactor,
            certificates=built.get(lc.name),
            endpoint_for=endpoint_for,
            shared=(shared or {}).get(lc.name),
        )
        for lc in config.listeners
    }
    clock: IReactorTime = reactor  # type: ignore[assignment]
    gateway = GatewayService(config, listeners, clock)
    for listener in listeners.values():
        listener.service.setServiceParent(gateway)
    if config.admin and admin:
        from tlsgate.admin import LocalView

        gateway.admin = build_admin(config, LocalView(gateway), reactor)
        gateway.admin.setServiceParent(gateway)
    return gateway


def build_admin(
    config: GatewayConfig, view: IGatewayView, reactor: IReactorCore
) -> ListenerService:
    """The admin endpoint's service, serving C{view} (an L{IGatewayView})."""
    from twisted.web.server import Site

    from tlsgate.admin import AdminRoot, token_file

    assert config.admin is not None
    site = Site(AdminRoot(view, token_file(config.admin_token_file)))
    site.displayTracebacks = False
    service = ListenerService(
        server_endpoint(reactor, config.admin, _where(config, "gateway", "admin")),
        site,
        description=config.admin,
    )
    service.setName("admin")
    return service
