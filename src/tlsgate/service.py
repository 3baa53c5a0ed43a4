"""
Wiring: a parsed L{GatewayConfig} becomes a running Twisted C{IService}.

One child service per listener; each owns its reloading context factory,
its backend pool and its listening port. Certificates are loaded when the
service is built, so unusable files stop start-up with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.protocols.tls import TLSMemoryBIOFactory

from tlsgate.certs import ReloadingContextFactory
from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.relay import Backend, BackendPool, RelayFactory


@dataclass(frozen=True)
class Listener:
    """The live parts of one listener, for embedding code and status pages."""

    config: ListenerConfig
    contexts: ReloadingContextFactory
    pool: BackendPool
    service: StreamServerEndpointService


class GatewayService(MultiService):
    """The whole gateway: one child service per listener."""

    def __init__(self, config: GatewayConfig, listeners: dict[str, Listener]) -> None:
        super().__init__()
        self.config = config
        self.listeners = listeners


def build_listener(config: ListenerConfig, reactor: IReactorCore) -> Listener:
    """
    Build one listener's parts.

    @raise tlsgate.errors.CertificateError: when its certificate cannot be served.
    """
    contexts = ReloadingContextFactory(
        config.cert, config.key, policy=config.tls, name=config.name
    )
    clock: IReactorTime = reactor  # type: ignore[assignment]
    pool = BackendPool(
        [Backend(d, clientFromString(reactor, d)) for d in config.backends],
        clock=clock,
        connect_timeout=config.backend_connect_timeout,
        name=config.name,
    )
    tls = TLSMemoryBIOFactory(contexts, False, RelayFactory(pool), clock=clock)
    service = StreamServerEndpointService(serverFromString(reactor, config.listen), tls)
    # Fail start-up loudly when the port cannot be bound, as operators expect.
    service._raiseSynchronously = True
    service.setName(f"listener:{config.name}")
    return Listener(config=config, contexts=contexts, pool=pool, service=service)


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
    listeners = {lc.name: build_listener(lc, reactor) for lc in config.listeners}
    gateway = GatewayService(config, listeners)
    for listener in listeners.values():
        listener.service.setServiceParent(gateway)
    return gateway
