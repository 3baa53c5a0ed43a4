"""
The tracker is transparent: the protocol it wraps sees the transport it
would see unwrapped (its interfaces, the peer certificate, STARTTLS), and a
STARTTLS handshake is bounded by C{handshake_timeout}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IReadWriteDescriptor,
    ISSLTransport,
    ISystemHandle,
    ITCPTransport,
    ITLSTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.mail.smtp import ESMTP
from twisted.test import iosim
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from tlsgate._assembly import TLSStack
from tlsgate.certs import ReloadingContextFactory
from tlsgate.testing import (
    CertificateAuthority,
    CertificateFiles,
    TestClock,
    connect_tls,
)
from tlsgate.tracker import CloseReason, ConnectionTracker, Limits, TrackedProtocol


class Recorder(Protocol):
    """A client that sends C{send} once connected and keeps what comes back."""

    def __init__(self, send: bytes = b"") -> None:
        self.send = send
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        if self.send:
            self.transport.write(self.send)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


class Where(Resource):
    """Answers with what a web application would use to build its URLs."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return (
            f"secure={request.isSecure()} url={request.prePathURL().decode()}".encode()
        )


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def contexts(
    tmp_path: Path, ca: CertificateAuthority, clock: TestClock
) -> ReloadingContextFactory:
    files = CertificateFiles(tmp_path, ca.issue())
    return ReloadingContextFactory(
        str(files.cert), str(files.key), wallclock=clock.wallclock
    )


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


def test_a_site_behind_the_tracker_builds_https_urls(
    ca: CertificateAuthority, contexts: ReloadingContextFactory, clock: TestClock
) -> None:
    """Behind TLS, request.isSecure() is true, so URLs and cookies are https."""
    site = Site(Where(), reactor=clock)
    stack = TLSStack.around(site, contexts, Limits(), clock, name="web")
    client = Recorder(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    conn = connect_tls(stack.factory, client, trust=ca.cert_pem, clock=clock)
    conn.flush()
    assert b"secure=True url=https://localhost/" in client.received
    tracked = conn.server.wrappedProtocol
    assert isinstance(tracked, TrackedProtocol)
    assert ISSLTransport.providedBy(tracked)
    assert not ITLSTransport.providedBy(tracked)  # TLS cannot start again
    assert tracked.getPeerCertificate() is None  # no client certificate asked


def test_the_peer_certificate_reaches_the_application(
    tmp_path: Path, ca: CertificateAuthority, clock: TestClock
) -> None:
    """With mutual TLS, the wrapped protocol reads the client's certificate."""
    from tlsgate.certs import ClientAuth

    client_ca = tmp_path / "clients.pem"
    client_ca.write_bytes(ca.cert_pem)
    files = CertificateFiles(tmp_path / "server", ca.issue())
    contexts = ReloadingContextFactory(
        str(files.cert), str(files.key), wallclock=clock.wallclock,
        client_auth=ClientAuth(str(client_ca), require=True),
    )  # fmt: skip
    app = Recorder()
    stack = TLSStack.around(
        Factory.forProtocol(lambda: app), contexts, Limits(), clock, name="m"
    )
    conn = connect_tls(
        stack.factory, Recorder(b"hi"), trust=ca.cert_pem, clock=clock,
        client_certificate=ca.issue("ops", client=True),
    )  # fmt: skip
    conn.flush()
    assert app.received == b"hi"
    cert = app.transport.getPeerCertificate()  # type: ignore[union-attr]
    assert cert is not None
    assert "CN=ops" in cert.to_cryptography().subject.rfc4514_string()


def esmtp_behind_tracker(
    contexts: ReloadingContextFactory, clock: TestClock, **limits: float
) -> tuple[ConnectionTracker, Recorder, iosim.IOPump]:
    def esmtp() -> ESMTP:
        server = ESMTP(contextFactory=contexts)
        server.host = b"mx.example"
        return server

    tracker = ConnectionTracker(
        Factory.forProtocol(esmtp), Limits(**limits), clock, name="smtp"
    )
    client = Recorder(b"EHLO client.example\r\n")
    server_address = IPv4Address("TCP", "127.0.0.1", 25)
    client_address = IPv4Address("TCP", "192.0.2.7", 40000)
    _client, _server, pump = iosim.connectedServerAndClient(
        lambda: tracker.buildProtocol(client_address),
        lambda: client,
        clientTransportFactory=lambda p: iosim.FakeTransport(
            p, False, hostAddress=client_address, peerAddress=server_address
        ),
        serverTransportFactory=lambda p: iosim.FakeTransport(
            p, True, hostAddress=server_address, peerAddress=client_address
        ),
        greet=False,
        clock=clock,
    )
    pump.flush()
    return tracker, client, pump


def test_esmtp_behind_the_tracker_offers_starttls(
    contexts: ReloadingContextFactory, clock: TestClock
) -> None:
    """On plain TCP the tracker declares ITLSTransport, so ESMTP offers STARTTLS."""
    tracker, client, _pump = esmtp_behind_tracker(contexts, clock)
    assert b"250-STARTTLS" in client.received or b"250 STARTTLS" in client.received
    (tracked,) = tracker.connections
    assert ITLSTransport.providedBy(tracked)
    assert not ISSLTransport.providedBy(tracked)


def test_a_stalled_starttls_handshake_is_closed_as_handshake_timeout(
    contexts: ReloadingContextFactory, clock: TestClock
) -> None:
    """After STARTTLS, the handshake_timeout runs again; idle does not take over."""
    tracker, client, pump = esmtp_behind_tracker(
        contexts, clock, handshake_timeout=5, idle_timeout=60
    )
    client.transport.write(b"STARTTLS\r\n")  # type: ignore[union-attr]
    pump.flush()
    assert b"220 Begin TLS negotiation now" in client.received
    clock.advance(30)  # a week in handshake terms; an idle close would need 60
    for _ in range(60):
        clock.advance(0.5)
    pump.flush()
    assert client.lost
    assert tracker.closed == {CloseReason.HANDSHAKE_TIMEOUT: 1}


def test_a_plain_tcp_transport_keeps_its_tcp_interface(clock: TestClock) -> None:
    """ITCPTransport (keep-alive, no-delay) stays visible through the tracker."""
    tracker = ConnectionTracker(Factory.forProtocol(Recorder), Limits(), clock)
    seen: list[bool] = []

    class Probe(Recorder):
        def connectionMade(self) -> None:
            seen.append(ITCPTransport.providedBy(self.transport))

    tracker.wrapped = Factory.forProtocol(Probe)
    from twisted.internet.testing import StringTransport
    from zope.interface import alsoProvides

    protocol = tracker.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport()
    alsoProvides(transport, ITCPTransport)
    protocol.makeConnection(transport)
    assert seen == [True]


@implementer(ITCPTransport, ISystemHandle, IReadWriteDescriptor)
class TCPTransport(StringTransport):
    """A plain TCP transport with its extras, and something beyond them."""

    def __init__(self) -> None:
        super().__init__()
        self.no_delay = False
        self.extra = "only the fallback reaches this"

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.no_delay

    def getHandle(self) -> str:
        return "the socket"

    def fileno(self) -> int:
        return 7


def tracked_over(
    transport: StringTransport, clock: TestClock, fallback: bool
) -> tuple[Any, Recorder]:
    app = Recorder()
    tracker = ConnectionTracker(
        Factory.forProtocol(lambda: app), Limits(), clock,
        attribute_fallback=fallback,
    )  # fmt: skip
    tracked = tracker.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
    assert isinstance(tracked, TrackedProtocol)
    tracked.makeConnection(transport)
    return tracked, app


@pytest.mark.parametrize("fallback", [True, False])
def test_the_transport_interfaces_are_served_with_or_without_the_fallback(
    clock: TestClock, fallback: bool
) -> None:
    transport = TCPTransport()
    tracked, app = tracked_over(transport, clock, fallback)
    wrapper: Any = app.transport
    assert wrapper is tracked
    assert ITCPTransport.providedBy(wrapper) and ISystemHandle.providedBy(wrapper)
    wrapper.setTcpNoDelay(True)
    assert transport.no_delay and wrapper.getTcpNoDelay()
    assert wrapper.getHandle() == "the socket"
    assert wrapper.disconnecting is False
    wrapper.loseConnection()
    assert wrapper.disconnecting is True  # as LineReceiver reads it
    # An extra the transport lacks is missing from the wrapper too.
    assert getattr(wrapper, "setTcpKeepAlive", None) is None


def test_only_the_fallback_reaches_beyond_the_interfaces(clock: TestClock) -> None:
    with_it, _ = tracked_over(TCPTransport(), clock, fallback=True)
    assert with_it.extra == "only the fallback reaches this"
    assert with_it.fileno() == 7
    assert IReadWriteDescriptor.providedBy(with_it)
    without, _ = tracked_over(TCPTransport(), clock, fallback=False)
    assert not hasattr(without, "extra") and not hasattr(without, "fileno")
    # What it has no members for, it does not declare.
    assert not IReadWriteDescriptor.providedBy(without)
    assert ITCPTransport.providedBy(without)


def test_without_the_fallback_lookups_on_the_wrapper_are_plain(
    clock: TestClock,
) -> None:
    """
    No __getattr__ on the wrapper's class: Python then looks its attributes
    up the plain way, which the interpreter can specialise (the reason for
    turning the fallback off).
    """
    without, _ = tracked_over(TCPTransport(), clock, fallback=False)
    with_it, _ = tracked_over(TCPTransport(), clock, fallback=True)
    assert type(without).__getattribute__ is object.__getattribute__
    assert not hasattr(type(without), "__getattr__")
    assert hasattr(type(with_it), "__getattr__")


def test_the_gateways_relay_is_tracked_without_the_fallback(tmp: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from tlsgate.config import parse_config
    from tlsgate.service import build_listener

    config = parse_config(
        "[listener:web]\nlisten = tcp:8443\nbackend = tcp:127.0.0.1:9\n"
        f"cert = {tmp / 'c.pem'}\nkey = {tmp / 'k.pem'}\n",
        file="g.ini",
    )
    listener = build_listener(config.listeners[0], MemoryReactorClock())
    tracked = listener.tracker.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
    assert isinstance(tracked, TrackedProtocol)
    assert not hasattr(type(tracked), "__getattr__")


class ISpecialTCP(ITCPTransport):
    """A transport interface of someone's own, extending ITCPTransport."""


def test_without_the_fallback_an_extending_interface_still_declares_its_base(
    clock: TestClock,
) -> None:
    @implementer(ISpecialTCP)
    class Special(StringTransport):
        pass

    without, _ = tracked_over(Special(), clock, fallback=False)
    assert ITCPTransport.providedBy(without) and ITransport.providedBy(without)
    assert not ISpecialTCP.providedBy(without)  # its members are not forwarded
