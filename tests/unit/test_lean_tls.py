"""
The gateway's one-object TLS transport (L{tlsgate._leantls}) beyond the
half-close behaviour it shares with the embeddable layer (those tests run
over both, in test_half_close.py): what it declares, how the port makes it,
backpressure, and the mutual-TLS callback's way to the tracker.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from OpenSSL import SSL
from twisted.internet import _producer_helpers, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    INegotiated,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure

from tests.helpers import Reactor
from tests.unit.test_half_close import BackendEndpoint, FusedConnection
from tlsgate._assembly import TLSStack
from tlsgate._gateway import _SwitchFactory
from tlsgate._leantls import LeanTLSServer
from tlsgate._tcp import LeanPort, LeanServer, use_lean_transports
from tlsgate.certs import ReloadingContextFactory
from tlsgate.relay import Backend, BackendPool, RelayFactory
from tlsgate.tracker import CloseReason, Limits


@contextlib.contextmanager
def connection(
    contexts: ReloadingContextFactory, ca: trustme.CA, **options: Any
) -> Iterator[Any]:
    """A L{FusedConnection}, its sockets closed afterwards."""
    c = FusedConnection(contexts, ca, **options)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fused(contexts: ReloadingContextFactory, ca: trustme.CA) -> Iterator[Any]:
    with connection(contexts, ca) as c:
        yield c


def test_it_declares_a_tls_transport_that_cannot_start_tls_again(fused: Any) -> None:
    t = fused.server
    assert ISSLTransport.providedBy(t) and INegotiated.providedBy(t)
    assert not ITLSTransport.providedBy(t)
    with pytest.raises(RuntimeError):
        t.startTLS(None)
    tracked = fused.tracked  # what the application sees is unchanged
    assert ISSLTransport.providedBy(tracked)
    assert IHalfCloseableProtocol.providedBy(tracked)
    assert isinstance(t.getHandle(), SSL.Connection)
    assert t.negotiatedProtocol is None  # no ALPN configured


def test_the_connection_leads_the_client_auth_callback_to_the_tracker(
    fused: Any,
) -> None:
    """certs._clientauth finds the tracked protocol through the app data."""
    assert fused.server.getHandle().get_app_data().wrappedProtocol is fused.tracked


def _backend_paused_while_the_client_reads_nothing(c: Any) -> None:
    """
    The backend answers a client that reads nothing: it is paused once the
    gateway's buffer is past its mark, the buffer stays about one chunk past
    it, and once the client reads, the backend resumes and every byte arrives
    in order.
    """
    backend = c.backend.wire
    chunk = b"z" * 65536
    writes = 0
    for _ in range(64):  # 4 MiB offered while the client reads nothing
        if backend.producerState == "paused":
            break
        c.backend.protocol.dataReceived(chunk)
        writes += 1
        c.turn()
    assert backend.producerState == "paused"
    t = c.server
    held = len(t.dataBuffer) - t.offset + t._tempDataLen
    assert held <= 2 * t.bufferSize + 65536 + 1024  # about one chunk past the mark
    received = b""
    for _ in range(1000):
        if backend.producerState != "paused":
            break
        c.move()
        received += c.read()[0]
    assert backend.producerState == "producing"  # resumed once drained
    c.move()
    received += c.read()[0]
    assert received == chunk * writes  # all of it, in order


def test_a_client_that_stops_reading_pauses_the_backend(fused: Any) -> None:
    """
    What the gateway cannot send waits in one transport buffer, and the
    backend is paused past it (the TCP transport's own producer logic, no
    membrane): memory per connection stays bounded.
    """
    fused.send(b"GET /big")
    _backend_paused_while_the_client_reads_nothing(fused)


def test_a_client_that_finished_before_the_backend_connected_pauses_it_too(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """
    The request and close_notify come with the client's Finished, so the
    client is done before the backend connects: its answer is still held
    back while the client reads nothing.
    """
    with connection(contexts, ca, backend_at_once=False, handshake=False) as c:
        c.handshake(then_send=b"GET /big", then_close_notify=True)
        c.backend.complete()
        c.move()
        assert c.backend.wire.value() == b"GET /big"
        assert c.backend.wire.write_closed
        _backend_paused_while_the_client_reads_nothing(c)


def test_a_tls_error_after_the_handshake_ends_it_as_one(fused: Any) -> None:
    fused.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # fails to decrypt
    assert fused.closing
    fused.lost()
    assert fused.reason == CloseReason.TLS_ERROR
    assert fused.server.getHandle() is None  # no cycle through OpenSSL's object
    assert fused.server.wrappedProtocol is None  # nor through the protocol


def test_the_port_accepts_tls_as_one_object_when_its_factory_allows(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """A LeanPort under the gateway's switchable factory; a plain one otherwise."""
    reactor = Reactor()
    pool = BackendPool([Backend("b", BackendEndpoint())], clock=reactor)
    stack = TLSStack.around(
        RelayFactory(pool), contexts, Limits(), reactor, name="web", half_close=True
    )
    switch = _SwitchFactory(stack.factory)
    assert switch.lean_tls is stack.factory.lean_tls
    port = tcp.Port(0, switch, interface="127.0.0.1", reactor=reactor)  # type: ignore[arg-type]
    port.startListening()
    try:
        use_lean_transports(port)
        assert type(port) is LeanPort
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        port.doRead()
        (transport,) = [r for r in reactor.readers if r is not port]
        assert type(transport) is LeanTLSServer
        assert transport.connected and transport.protocol is not None
        assert transport.protocol in stack.tracker.connections
        client.close()
        transport.abortConnection()
        reactor.advance(0)
        assert not stack.tracker.connections

        switch.target = Factory.forProtocol(Protocol)  # a reload to a plain one
        assert switch.lean_tls is None
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        port.doRead()
        others = [r for r in reactor.readers if r is not port]
        assert [type(t) for t in others] == [LeanServer]
        client.close()
        others[0].abortConnection()
        reactor.advance(0)
    finally:
        port.socket.close()


class Banner(Protocol):
    """Speaks first, before the handshake is done (as an SMTP server would)."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"220 ready\r\n")


def test_writes_before_the_handshake_leave_once_it_completes(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    with connection(contexts, ca, app=Factory.forProtocol(Banner)) as c:
        assert c.read() == (b"220 ready\r\n", None)


def test_a_close_before_the_handshake_is_an_abort(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    with connection(contexts, ca, handshake=False) as c:
        c.tracked.loseConnection()
        assert c.aborted
        c.lost()
        assert c.reason == CloseReason.CLIENT
        assert c.stack.tracker.handshakes_failed == 1


def test_without_pyopenssls_internals_its_public_calls_serve(
    contexts: ReloadingContextFactory, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L{tlsgate._membio}'s direct calls fall back to pyOpenSSL's methods."""
    from tlsgate import _membio, _tlscore

    monkeypatch.setattr(_membio, "AVAILABLE", False)
    monkeypatch.setattr(_membio, "DIRECT", False)
    monkeypatch.setattr(_tlscore, "mem_data", lambda bio, null: _membio.UNKNOWN)
    with connection(contexts, ca) as c:
        c.send(b"request")
        assert c.backend.wire.value() == b"request"
        c.backend.protocol.dataReceived(b"answer" * 10_000)
        c.backend.fin()
        c.move()
        assert c.read() == (b"answer" * 10_000, "close_notify")
        c.close_notify()
        c.tcp_closed()
        assert c.reason == CloseReason.BACKEND


class BannerThenClose(Banner):
    """Says its piece before the handshake, and closes."""

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        self.transport.loseConnection()


def test_writes_held_for_the_handshake_are_not_dropped_by_a_close(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    with connection(contexts, ca, app=Factory.forProtocol(BannerThenClose)) as c:
        assert c.read() == (b"220 ready\r\n", "close_notify")
        c.close_notify()
        c.tcp_closed()
        assert c.reason == CloseReason.CLIENT


class Pulled(Protocol):
    """Registers a pull producer once the handshake is done."""

    def __init__(self) -> None:
        self.pulls = 0

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self, False)  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        assert self.transport is not None
        self.pulls += 1
        self.transport.write(b"%d;" % self.pulls)
        if self.pulls == 5:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        pass


def test_a_pull_producer_is_pulled_until_it_unregisters(
    contexts: ReloadingContextFactory, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.internet import _producer_helpers
    from twisted.internet.task import Cooperator

    with connection(contexts, ca, app=Factory.forProtocol(Pulled)) as c:
        steps = Cooperator(scheduler=lambda f: c.clock.callLater(0, f))
        monkeypatch.setattr(_producer_helpers, "cooperate", steps.cooperate)
        c.send(b"go")
        for _ in range(20):
            c.clock.advance(0)
            c.move()
        assert c.read() == (b"1;2;3;4;5;", None)
        assert c.server.producer is None


class FailsAtTheEnd(Protocol):
    """Raises on the client's FIN, or on the bytes that come with the end."""

    def __init__(self) -> None:
        self.lost: list[object] = []

    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("the protocol failed")

    def readConnectionLost(self) -> None:
        raise RuntimeError("the protocol failed")

    def connectionLost(self, reason: object = None) -> None:
        self.lost.append(reason)


def failing(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> contextlib.AbstractContextManager[Any]:
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from zope.interface import directlyProvides

    def build(addr: object) -> FailsAtTheEnd:
        p = FailsAtTheEnd()
        directlyProvides(p, IHalfCloseableProtocol)
        return p

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]
    return connection(contexts, ca, app=factory)


def test_a_protocol_failing_on_the_clients_fin_is_disconnected(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    with failing(contexts, ca) as c:
        app = c.tracked.wrapped
        c.fin()  # its readConnectionLost raises: logged, and the end
        assert c.server.disconnected
        assert len(app.lost) == 1
        assert c.stack.tracker.connections == set()


def test_a_protocol_failing_in_the_last_read_still_hears_the_end(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """A record left in the BIO reaches the protocol in connectionLost."""
    from tlsgate import _membio

    with failing(contexts, ca) as c:
        app = c.tracked.wrapped
        c.tls.write(b"boom")
        _membio.write_in(c.handle, c._out.read())  # in the BIO, not yet read
        with pytest.raises(RuntimeError):
            c.server.connectionLost(Failure(ConnectionDone()))
        assert c.server.disconnected  # the socket is closed all the same
        assert len(app.lost) == 1  # and the protocol told once


def test_a_slow_reader_gets_the_whole_answer_after_the_backend_closed(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """
    The backend sends 1 MiB and closes while the client reads 32 KiB a
    second: the close_grace abort waits while it reads, and comes only once
    it stopped taking anything.
    """
    limits = Limits(close_grace=5, idle_timeout=300)
    with connection(contexts, ca, limits=limits) as c:
        c.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send(b"GET /file")
        body = b"b" * (1 << 20)
        backend = c.backend.wire
        offered = 0
        got = b""
        for _ in range(300):
            if offered < len(body) and backend.producerState != "paused":
                c.backend.protocol.dataReceived(body[offered : offered + 65536])
                offered += 65536
                if offered == len(body):
                    c.backend.fin()
                    c.backend.closed()
            with contextlib.suppress(BlockingIOError):
                c._in.write(c.theirs.recv(32768))
            got += c.read()[0]
            c.clock.advance(1)
            c.turn()
            if c.server.disconnected:
                break
        assert got == body
        assert c.server.disconnected and c.aborted  # the client never answered
        assert c.reason == CloseReason.BACKEND


class Strict:
    """A push producer that, as Twisted's pull-producer wrapper, refuses an
    unpaired resume; it counts what it is told."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = self.resumes = self.stops = 0

    def pauseProducing(self) -> None:
        self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        if not self.paused:
            raise AssertionError("resumed without a pause")
        self.resumes += 1
        self.paused = False

    def stopProducing(self) -> None:
        self.stops += 1


def producing_app(*, before: int, after: int) -> Any:
    """An application that writes C{before} times, registers a L{Strict}
    producer, then writes C{after} times, all before the handshake ends."""

    class App(Protocol):
        def connectionMade(self) -> None:
            for _ in range(before):
                self.transport.write(b"early;")  # type: ignore[union-attr]
            self.producer = Strict()
            self.transport.registerProducer(self.producer, True)  # type: ignore[union-attr]
            for _ in range(after):
                self.transport.write(b"held;")  # type: ignore[union-attr]

    return Factory.forProtocol(App)


@pytest.mark.parametrize(("before", "after"), [(1, 0), (0, 2), (1, 2)])
def test_writes_held_for_the_handshake_pause_and_resume_a_producer_in_pairs(
    contexts: ReloadingContextFactory, ca: trustme.CA, before: int, after: int
) -> None:
    """
    Held writes pause the producer once, however many, and resume it once
    they go; a producer that registered after they began is left alone.
    """
    app = producing_app(before=before, after=after)
    with connection(contexts, ca, app=app, handshake=False) as c:
        c.handshake()
        producer = c.tracked.wrapped.producer
        assert (producer.pauses, producer.resumes) == ((1, 1) if after else (0, 0))
        assert not producer.paused
        assert c.read()[0] == b"early;" * before + b"held;" * after


class Pull:
    """A pull producer: writes once each time it is asked."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.pulls = self.stops = 0

    def resumeProducing(self) -> None:
        self.pulls += 1
        self.consumer.write(b"pulled;")

    def stopProducing(self) -> None:
        self.stops += 1


def test_a_pull_producer_is_stopped_when_the_tls_connection_ends(
    contexts: ReloadingContextFactory, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    As a TCP transport stops its producer when the connection goes: the
    wrapper that drives a pull producer would pull on otherwise.
    """
    turns: list[Any] = []
    cooperator = Cooperator(
        scheduler=turns.append, terminationPredicateFactory=lambda: lambda: True
    )
    monkeypatch.setattr(_producer_helpers, "cooperate", cooperator.cooperate)

    class App(Protocol):
        def connectionMade(self) -> None:
            self.pull = Pull(self.transport)
            self.transport.registerProducer(self.pull, False)  # type: ignore[union-attr]

    with connection(contexts, ca, app=Factory.forProtocol(App)) as c:
        pull = c.tracked.wrapped.pull
        turns.pop(0)()
        assert pull.pulls == 1
        c.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # fails to decrypt
        c.lost()
        assert pull.stops == 1
        for _ in range(5):
            if turns:
                turns.pop(0)()
        assert pull.pulls == 1


def test_a_push_producer_is_let_go_when_the_tls_connection_ends(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """The relay ends its backend itself, with close_notify if it is TLS."""
    app = producing_app(before=0, after=0)
    with connection(contexts, ca, app=app) as c:
        producer = c.tracked.wrapped.producer
        c.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        c.lost()
        assert c.server.producer is None
        assert producer.stops == 0
