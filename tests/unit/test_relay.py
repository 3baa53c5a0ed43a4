"""
The relay and backend pool, driven deterministically.

A whole TLS client -> gateway -> backend path runs in memory with
C{twisted.test.iosim}; time is a C{task.Clock}. Backpressure is checked on
C{StringTransport}, which records producer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from tests.helpers import make_pair, write_atomically
from tlsgate.certs import ReloadingContextFactory
from tlsgate.errors import BackendUnavailable
from tlsgate.relay import (
    MAX_EARLY_BYTES,
    Backend,
    BackendPool,
    RelayFactory,
    RelayProtocol,
)


class Recorder(Protocol):
    """A peer that records what it receives and whether it was closed."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False
        self.handshake_done = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """A client endpoint whose connection attempts the test completes by hand."""

    def __init__(self, backend: type[Recorder] = Echo) -> None:
        self.backend = backend
        self.attempts: list[tuple[defer.Deferred[Any], Any]] = []
        self.cancelled = 0
        self.peers: list[Recorder] = []
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled += 1

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self.attempts.append((d, factory))
        return d

    def succeed(self, index: int = -1) -> Recorder:
        d, factory = self.attempts[index]
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        peer = self.backend()
        pump = iosim.connect(
            peer,
            iosim.makeFakeServer(peer),
            proto,
            iosim.makeFakeClient(proto),
            greet=False,
        )
        self.peers.append(peer)
        self.pumps.append(pump)
        d.callback(proto)
        return peer

    def fail(self, index: int = -1) -> None:
        self.attempts[index][0].errback(ConnectionRefusedError("refused"))


def pump_all(*pumps: iosim.IOPump) -> None:
    """Pump every connection until none moves data any more."""
    for _ in range(100):
        if not any([p.pump() for p in pumps]):
            return
    raise AssertionError("connections never went quiet")


class Gateway:
    """A gateway listener assembled from its parts, with in-memory connections."""

    def __init__(
        self,
        contexts: ReloadingContextFactory,
        ca: trustme.CA,
        *endpoints: FakeEndpoint,
    ) -> None:
        self.clock = Clock()
        self.endpoints = endpoints or (FakeEndpoint(),)
        self.pool = BackendPool(
            [Backend(f"b{i}", e) for i, e in enumerate(self.endpoints)],
            clock=self.clock,
            connect_timeout=5,
        )
        self.server_factory = TLSMemoryBIOFactory(
            contexts, False, RelayFactory(self.pool), clock=self.clock
        )
        trust = Certificate.loadPEM(ca.cert_pem.bytes())
        self.client_options = optionsForClientTLS("localhost", trustRoot=trust)

    def connect(self) -> tuple[Recorder, Any, iosim.IOPump]:
        client = Recorder()
        client_factory = TLSMemoryBIOFactory(
            self.client_options,
            True,
            ClientFactory.forProtocol(lambda: client),
            clock=self.clock,
        )
        _cproto, sproto, pump = iosim.connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(
                IPv4Address("TCP", "10.0.0.1", 5)
            ),
            lambda: client_factory.buildProtocol(None),
            clock=self.clock,
        )
        return client, sproto, pump


def test_bytes_flow_both_ways_after_the_handshake(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """Client bytes reach the backend and its answer comes back, over real TLS."""
    gw = Gateway(contexts, ca)
    client, _server, pump = gw.connect()
    endpoint = gw.endpoints[0]
    assert len(endpoint.attempts) == 1  # dialled once the handshake finished
    backend = endpoint.succeed()
    client.transport.write(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]
    pump_all(pump, *endpoint.pumps)
    assert backend.received == b"GET / HTTP/1.0\r\n\r\n"
    assert client.received == b"GET / HTTP/1.0\r\n\r\n"
    # 18 bytes each way, whole (the tracker, not the relay, counts bytes for metrics)
    assert (len(backend.received), len(client.received)) == (18, 18)


def test_failed_handshake_never_dials_a_backend(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """A client that does not trust the certificate costs no backend connection."""
    gw = Gateway(contexts, ca)
    gw.client_options = optionsForClientTLS(
        "localhost", trustRoot=Certificate.loadPEM(trustme.CA().cert_pem.bytes())
    )
    client, _, pump = gw.connect()
    pump_all(pump)
    assert gw.endpoints[0].attempts == []
    assert client.lost


def test_bytes_sent_before_the_backend_connects_arrive_in_order(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """Early client bytes are held (bounded) and written first, in order."""
    gw = Gateway(contexts, ca)
    client, _, pump = gw.connect()
    client.transport.write(b"one,")  # type: ignore[union-attr]
    client.transport.write(b"two,")  # type: ignore[union-attr]
    pump_all(pump)
    backend = gw.endpoints[0].succeed()
    client.transport.write(b"three")  # type: ignore[union-attr]
    pump_all(pump, *gw.endpoints[0].pumps)
    assert backend.received == b"one,two,three"


def test_backend_close_delivers_its_last_bytes_then_closes_the_client(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """What the backend sent before closing reaches the client before the close."""
    gw = Gateway(contexts, ca, FakeEndpoint(Recorder))
    client, _, pump = gw.connect()
    backend = gw.endpoints[0].succeed()
    backend.transport.write(b"x" * 100_000)  # type: ignore[union-attr]
    backend.transport.loseConnection()  # type: ignore[union-attr]
    pump_all(pump, *gw.endpoints[0].pumps)
    assert client.received == b"x" * 100_000
    assert client.lost


def test_client_close_delivers_its_last_bytes_then_closes_the_backend(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """The client's final bytes reach the backend, then the backend is closed."""
    gw = Gateway(contexts, ca, FakeEndpoint(Recorder))
    client, _, pump = gw.connect()
    backend = gw.endpoints[0].succeed()
    client.transport.write(b"last words")  # type: ignore[union-attr]
    client.transport.loseConnection()  # type: ignore[union-attr]
    pump_all(pump, *gw.endpoints[0].pumps)
    assert backend.received == b"last words"
    assert backend.lost


def test_open_connections_keep_their_certificate_across_a_swap(
    tmp_path: Path, contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """A swap affects new connections only; the open one keeps relaying."""
    gw = Gateway(contexts, ca)
    client1, server1, pump1 = gw.connect()
    gw.endpoints[0].succeed()
    old = server1.getHandle().get_certificate().to_cryptography()
    new = make_pair(ca)
    write_atomically(tmp_path / "k.pem", new.key)
    write_atomically(tmp_path / "c.pem", new.chain)
    _client2, server2, pump2 = gw.connect()
    gw.endpoints[0].succeed()
    assert server2.getHandle().get_certificate().to_cryptography() != old
    client1.transport.write(b"still here")  # type: ignore[union-attr]
    pump_all(pump1, pump2, *gw.endpoints[0].pumps)
    assert client1.received == b"still here"
    assert contexts.generation == 2


def test_client_is_paused_until_the_backend_connects_then_producers_cross() -> None:
    """portforward's backpressure: no reads before the backend, producers both ways."""
    endpoint = FakeEndpoint()
    pool = BackendPool([Backend("b", endpoint)], clock=Clock())
    relay = RelayProtocol(pool)
    client_transport = StringTransport()
    relay.makeConnection(client_transport)
    assert client_transport.producerState == "producing"
    relay.handshakeCompleted()
    assert client_transport.producerState == "paused"
    d, factory = endpoint.attempts[0]
    backend = factory.buildProtocol(None)
    backend_transport = StringTransport()
    backend.makeConnection(backend_transport)
    d.callback(backend)
    assert client_transport.producerState == "producing"
    assert backend_transport.producer is client_transport
    assert client_transport.producer is backend_transport
    assert client_transport.streaming and backend_transport.streaming


def test_a_flood_while_paused_is_cut_off() -> None:
    """Bytes past the early-data bound close the connection instead of growing memory."""
    endpoint = FakeEndpoint()
    relay = RelayProtocol(BackendPool([Backend("b", endpoint)], clock=Clock()))
    transport = StringTransport()
    relay.makeConnection(transport)
    relay.handshakeCompleted()
    relay.dataReceived(b"x" * MAX_EARLY_BYTES)
    assert not transport.disconnecting
    relay.dataReceived(b"x")
    assert transport.disconnecting


def test_client_leaving_while_connecting_cancels_the_attempt() -> None:
    """A backend attempt never outlives the client it was for."""
    endpoint = FakeEndpoint()
    relay = RelayProtocol(BackendPool([Backend("b", endpoint)], clock=Clock()))
    relay.makeConnection(StringTransport())
    relay.handshakeCompleted()
    relay.connectionLost(Failure(ConnectionRefusedError()))
    assert endpoint.cancelled == 1


def test_round_robin_starts_each_connection_at_the_next_backend() -> None:
    """Connections are spread over backends in turn."""
    endpoints = [FakeEndpoint() for _ in range(3)]
    pool = BackendPool([Backend(str(i), e) for i, e in enumerate(endpoints)], Clock())
    for _ in range(6):
        pool.connect(Factory.forProtocol(Protocol))
    assert [len(e.attempts) for e in endpoints] == [2, 2, 2]


def test_refused_backend_fails_over_to_the_next() -> None:
    """A refusal moves the same connection on to the next backend."""
    a, b = FakeEndpoint(), FakeEndpoint()
    pool = BackendPool([Backend("a", a), Backend("b", b)], Clock())
    result = pool.connect(Factory.forProtocol(Protocol))
    a.fail()
    assert len(b.attempts) == 1
    b.succeed()
    assert result.called
    assert pool.connect_failures == {"a": 1}


def test_slow_backend_times_out_and_fails_over() -> None:
    """backend_connect_timeout bounds each attempt; the next backend is tried."""
    clock = Clock()
    a, b = FakeEndpoint(), FakeEndpoint()
    pool = BackendPool([Backend("a", a), Backend("b", b)], clock, connect_timeout=5)
    pool.connect(Factory.forProtocol(Protocol))
    clock.advance(4.9)
    assert b.attempts == []
    clock.advance(0.2)
    assert a.cancelled == 1
    assert len(b.attempts) == 1


def test_no_backend_answering_closes_the_client_cleanly(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """When every backend fails, the client is closed (not left hanging)."""
    gw = Gateway(contexts, ca, FakeEndpoint(), FakeEndpoint())
    client, _, pump = gw.connect()
    gw.endpoints[0].fail()
    gw.endpoints[1].fail()
    pump_all(pump)
    assert client.lost
    failures: list[Failure] = []
    gw.clock.advance(1.5)  # past both back-offs
    gw.pool.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
    gw.endpoints[1].fail()
    gw.endpoints[0].fail()
    assert failures and failures[0].check(BackendUnavailable)
    assert "b0" in str(failures[0].value) and "b1" in str(failures[0].value)


def test_failed_backends_are_skipped_while_down() -> None:
    """Passive health: a failed backend gets no attempts while others are up."""
    clock = Clock()
    a, b = FakeEndpoint(), FakeEndpoint()
    pool = BackendPool([Backend("a", a), Backend("b", b)], clock)
    pool.connect(Factory.forProtocol(Protocol))
    a.fail()
    b.succeed()
    assert pool.is_down("a") and not pool.is_down("b")
    for _ in range(4):
        pool.connect(Factory.forProtocol(Protocol))
        b.succeed()
    assert len(a.attempts) == 1 and len(b.attempts) == 5


def test_back_off_doubles_and_resets_on_success() -> None:
    """1 s, then 2 s, then 4 s; a success clears it."""
    clock = Clock()
    a = FakeEndpoint()
    pool = BackendPool([Backend("a", a)], clock)
    for expected in (1.0, 2.0, 4.0):
        pool.connect(Factory.forProtocol(Protocol))
        a.fail()
        clock.advance(expected - 0.01)
        assert pool.is_down("a")
        clock.advance(0.02)
        assert not pool.is_down("a")
    pool.connect(Factory.forProtocol(Protocol))
    a.succeed()
    pool.connect(Factory.forProtocol(Protocol))
    a.fail()
    clock.advance(1.01)
    assert not pool.is_down("a")  # back to 1 s after the success


def test_every_backend_down_refuses_at_once() -> None:
    """No connection waits on backends that are known to fail."""
    clock = Clock()
    a = FakeEndpoint()
    pool = BackendPool([Backend("a", a)], clock)
    pool.connect(Factory.forProtocol(Protocol))
    a.fail()
    failures: list[Failure] = []
    pool.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
    assert failures and failures[0].check(BackendUnavailable)
    assert len(a.attempts) == 1  # not even tried
    clock.advance(1.1)
    pool.connect(Factory.forProtocol(Protocol))
    a.succeed()
    assert not pool.is_down("a")
