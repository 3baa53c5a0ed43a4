"""
Wiring: a parsed L{GatewayConfig} becomes a running Twisted C{IService}.

One child service per listener; each owns its reloading context factory, its
backend pool, its connection tracker and its listening port. Certificates
are loaded when the service is built, so unusable files stop start-up with a
clear error. Stopping the service drains: listeners stop accepting, open
connections get C{drain_timeout} to finish, the rest are closed gracefully.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory

from tlsgate._gateway import Certificates, GatewayService, Listener, ListenerService
from tlsgate.certs import ClientAuth, OcspStaple, ReloadingContextFactory
from tlsgate.certs._expiry import ExpiryWarnings
from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.relay import Backend, BackendPool, RelayFactory
from tlsgate.sni import SniDirectory, install_servername_callback
from tlsgate.tracker import ConnectionTracker, ListenerCounts
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
]

#: How a listener's server endpoint is made: from its C{listen} description
#: by default; a worker process adopts the socket its supervisor bound.
EndpointFor = Callable[[ListenerConfig, IReactorCore], IStreamServerEndpoint]


def _listen_endpoint(
    config: ListenerConfig, reactor: IReactorCore
) -> IStreamServerEndpoint:
    endpoint: IStreamServerEndpoint = serverFromString(reactor, config.listen)
    return endpoint


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


def build_contexts(
    config: ListenerConfig, first_generation: int = 1
) -> ReloadingContextFactory:
    """The listener's reloading context factory, with client auth and OCSP."""
    return build_certificates(config, first_generation).contexts


def build_certificates(
    config: ListenerConfig, first_generation: int = 1
) -> Certificates:
    """
    The listener's reloading context factory (with client auth and OCSP) and
    its SNI directory, which the factory's servername callback consults.
    """
    client_auth = None
    if config.client_ca is not None and config.client_auth != "none":
        client_auth = ClientAuth(
            config.client_ca,
            require=config.client_auth == "require",
            allow=config.allow,
        )
    ocsp = (
        OcspStaple(config.ocsp_response, config.name) if config.ocsp_response else None
    )
    sni = None
    if config.sni_dir is not None:
        sni = SniDirectory(
            config.sni_dir,
            lambda cert, key: ReloadingContextFactory(
                cert,
                key,
                policy=config.tls,
                name=f"{config.name} sni_dir",
                client_auth=client_auth,
            ),
            name=config.name,
        )
    on_context = None
    if sni is not None or config.sni_strict:
        on_context = partial(
            install_servername_callback, directory=sni, strict=config.sni_strict
        )
    contexts = ReloadingContextFactory(
        config.cert, config.key, policy=config.tls, name=config.name,
        first_generation=first_generation, client_auth=client_auth, ocsp=ocsp,
        on_context=on_context,
    )  # fmt: skip
    return Certificates(contexts, sni)


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
    """
    if certificates is None:
        certificates = build_certificates(config)
    contexts = certificates.contexts
    clock: IReactorTime = reactor  # type: ignore[assignment]
    pool = build_pool(config, reactor)
    tracker = ConnectionTracker(
        RelayFactory(pool, proxy_protocol=config.proxy_protocol),
        config.limits,
        clock,
        name=config.name,
        generation=lambda: contexts.generation,
        shared=shared,
    )
    contexts.listeners.append(tracker.certificate_changed)
    tls = TLSMemoryBIOFactory(contexts, False, tracker, clock=clock)
    service = ListenerService(
        endpoint_for(config, reactor), tls, tracker, config.listen
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
    gateway = GatewayService(config, listeners)
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
        serverFromString(reactor, config.admin), site, description=config.admin
    )
    service.setName("admin")
    return service
