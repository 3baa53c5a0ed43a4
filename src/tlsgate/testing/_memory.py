"""A TLS client and server connected in memory, over Twisted's iosim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
)
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test import iosim
from zope.interface import implementer

from tlsgate.testing._certs import CertificatePair
from tlsgate.testing._clock import TestClock


@implementer(IProtocolFactory)
class _One:
    """A factory that hands out one protocol made beforehand."""

    def __init__(self, protocol: IProtocol) -> None:
        self.protocol = protocol

    def buildProtocol(self, addr: IAddress) -> IProtocol:
        return self.protocol

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


@dataclass(frozen=True)
class TLSConnection:
    """
    One connection, as both ends see it.

    @ivar client: the client's TLS protocol (its C{wrappedProtocol} is yours).
    @ivar server: what the server factory built (the TLS layer, for a
        reloading factory or a C{tlsgate:} endpoint).
    """

    client: TLSMemoryBIOProtocol
    server: Any
    pump: iosim.IOPump

    def flush(self) -> None:
        """Move bytes both ways until nothing is left to move."""
        self.pump.flush()


def connect_tls(
    server: IProtocolFactory,
    client: IProtocol,
    *,
    trust: bytes,
    contexts: IOpenSSLServerConnectionCreator | None = None,
    hostname: str = "localhost",
    client_certificate: CertificatePair | None = None,
    clock: Clock | None = None,
    peer: str = "192.0.2.1",
) -> TLSConnection:
    """
    Connect C{client} to C{server} over TLS, in memory, and run the handshake.

    @param server: the server's factory; it speaks TLS itself (a
        C{tlsgate:} endpoint's stack) unless C{contexts} is given, which
        then wraps it (a L{tlsgate.certs.ReloadingContextFactory}).
    @param trust: the CA certificate (PEM) the client trusts.
    @param hostname: the name the client asks for (SNI) and checks.
    @param client_certificate: presented for mutual TLS.
    @param clock: the TLS layers' timers; the pump fires those due at each
        flush (default: a new L{TestClock}; give the one your server uses).
    @param peer: the client's address as the server sees it.
    """
    if clock is None:
        clock = TestClock()
    if contexts is not None:
        server = TLSMemoryBIOFactory(contexts, False, server, clock=clock)
    own = None
    if client_certificate is not None:
        own = PrivateCertificate.loadPEM(
            client_certificate.chain + client_certificate.key
        )
    options = optionsForClientTLS(
        hostname, trustRoot=Certificate.loadPEM(trust), clientCertificate=own
    )
    client_factory = TLSMemoryBIOFactory(options, True, _One(client), clock=clock)
    server_address = IPv4Address("TCP", "127.0.0.1", 443)
    client_address = IPv4Address("TCP", peer, 40000)
    client_tls, server_protocol, pump = iosim.connectedServerAndClient(
        lambda: server.buildProtocol(client_address),
        lambda: client_factory.buildProtocol(server_address),
        clientTransportFactory=lambda p: iosim.FakeTransport(
            p, isServer=False, hostAddress=client_address, peerAddress=server_address
        ),
        serverTransportFactory=lambda p: iosim.FakeTransport(
            p, isServer=True, hostAddress=server_address, peerAddress=client_address
        ),
        greet=False,
        clock=clock,
    )
    pump.flush()
    return TLSConnection(client_tls, server_protocol, pump)
