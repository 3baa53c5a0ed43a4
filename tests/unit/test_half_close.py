"""
Half-close through the gateway's TLS layer, relay and tracker, in memory.

The client is Python's C{ssl.SSLObject} over memory BIOs (so close_notify and
the FIN are separate, as real clients send them); the gateway's listener stack
(L{TLSStack} with C{half_close}) runs over a C{StringTransport}, and the
backend is a protocol on another one. A FIN is the C{readConnectionLost()}
the TCP transport would call; time is a C{task.Clock}.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy

from tests.helpers import Reactor
from tlsgate import _tlscore
from tlsgate._assembly import TLSStack
from tlsgate._membio import RENEW_AFTER, SEND_SIZE
from tlsgate.certs import ReloadingContextFactory
from tlsgate.relay import Backend, BackendPool, RelayFactory
from tlsgate.tracker import CloseReason, Limits

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)


class Wire(StringTransport):
    """A TCP connection's near end: records writes, closes and half-closes."""

    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 443), peerAddress=CLIENT
        )
        self.write_closed = False
        self.aborted = False
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def take(self) -> bytes:
        data = self.value()
        self.clear()
        return data


@implementer(IStreamClientEndpoint)
class BackendEndpoint:
    """Connects at once to a backend whose input the test reads from its wire."""

    def __init__(self, at_once: bool = True) -> None:
        self.protocol: Any = None
        self.wire = Wire()
        self.at_once = at_once
        self.cancelled = 0
        self._pending: tuple[defer.Deferred[Any], Any] | None = None

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if not self.at_once:

            def cancel(_: object) -> None:
                self.cancelled += 1

            d: defer.Deferred[Any] = defer.Deferred(cancel)
            self._pending = (d, factory)
            return d
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        self.protocol.makeConnection(self.wire)
        return defer.succeed(self.protocol)

    def complete(self) -> None:
        """A connection attempt left pending (C{at_once=False}) succeeds."""
        assert self._pending is not None
        d, factory = self._pending
        self.at_once = True
        d.callback(self.connect(factory).result)

    def fin(self) -> None:
        """The backend shuts down writing (its FIN reaches the gateway)."""
        self.protocol.readConnectionLost()

    def closed(self) -> None:
        """The backend's connection ends."""
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Connection:
    """
    One client connection through the gateway's stack as an embedder builds
    it: L{HalfCloseTLSProtocol} over a TCP transport (a L{Wire}), driven by
    hand. L{FusedConnection} is the same through the gateway's own
    one-object transport. The application is the relay to a L{BackendEndpoint}
    unless C{app} (a protocol factory) says otherwise.
    """

    def __init__(
        self,
        contexts: ReloadingContextFactory,
        ca: trustme.CA,
        *,
        version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
        limits: Limits | None = None,
        handshake: bool = True,
        backend_at_once: bool = True,
        app: Any = None,
    ) -> None:
        self.clock = Reactor()
        self.backend = BackendEndpoint(at_once=backend_at_once)
        pool = BackendPool([Backend("b", self.backend)], clock=self.clock)
        self.stack = TLSStack.around(
            app or RelayFactory(pool), contexts, limits or Limits(), self.clock,
            name="web", half_close=True,
        )  # fmt: skip
        self.accept()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(ctx)
        ctx.minimum_version = ctx.maximum_version = version
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_hostname="localhost")
        if handshake:
            self.handshake()

    # -- the server side: what differs between the two stacks -------------

    def accept(self) -> None:
        self.server: Any = self.stack.factory.buildProtocol(CLIENT)
        self.wire = Wire()
        self.server.makeConnection(self.wire)

    def feed(self, data: bytes) -> None:
        """Bytes from the client reach the gateway."""
        self.server.dataReceived(data)

    def fin_arrives(self) -> None:
        """The client's FIN reaches the gateway."""
        self.server.readConnectionLost()

    def take(self) -> bytes:
        """What the gateway sent the client since the last take."""
        return self.wire.take()

    def unsent(self) -> bytes:
        """What the gateway sent the client that it has not read yet (not taken)."""
        return self.wire.value()

    @property
    def closing(self) -> bool:
        """The gateway closes (or closed) the TCP connection."""
        return bool(self.wire.disconnecting)

    @property
    def aborted(self) -> bool:
        return self.wire.aborted

    @property
    def writes(self) -> int:
        """Socket writes so far."""
        return self.wire.writes

    def lost(self) -> None:
        """The TCP connection's end reaches the gateway."""
        self.server.connectionLost(Failure(ConnectionDone()))

    @property
    def tcp_producer(self) -> Any:
        """What the client's TCP connection pauses when its buffer is full."""
        return self.wire.producer

    @property
    def handle(self) -> Any:
        """The server's C{SSL.Connection} (both sides keep Twisted's name)."""
        return self.server._tlsConnection

    @property
    def held(self) -> int:
        return int(self.server._held)

    def close(self) -> None:
        """Nothing to give back: no sockets."""

    # -- the client --------------------------------------------------------

    def handshake(
        self, then_send: bytes = b"", *, then_close_notify: bool = False
    ) -> None:
        """
        Complete the client's handshake; C{then_send} and close_notify leave
        with its last flight (one read for the gateway), as a client that has
        its request ready sends them.
        """
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                assert self.move(), "the handshake stalled"
        if then_send:
            self.tls.write(then_send)
        if then_close_notify:
            with contextlib.suppress(ssl.SSLWantReadError):
                self.tls.unwrap()
        self.move()

    def move(self) -> bool:
        """Move what each side wrote to the other; whether anything moved."""
        moved = False
        while True:
            out = self._out.read()
            if out:
                self.feed(out)
            back = self.take()
            if back:
                self._in.write(back)
            if not out and not back:
                return moved
            moved = True

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.move()

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()  # the gateway's close_notify is not waited for
        self.move()

    def fin(self) -> None:
        """The client's FIN reaches the gateway."""
        self.fin_arrives()
        self.move()

    def read(self) -> tuple[bytes, str | None]:
        """What the client can read now, and how its input ended (if it did)."""
        chunks = []
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return b"".join(chunks), None
            except ssl.SSLZeroReturnError:
                return b"".join(chunks), "close_notify"
            if not data:  # what SSLObject returns for close_notify alone
                return b"".join(chunks), "close_notify"
            chunks.append(data)

    def tcp_closed(self) -> None:
        """The gateway's TCP close (after loseConnection) completes."""
        assert self.closing
        self.lost()

    @property
    def reason(self) -> CloseReason | None:
        closed = self.stack.tracker.closed
        reasons = [r for r, n in closed.items() if n]
        assert len(reasons) <= 1 and sum(closed.values()) <= 1, closed
        return reasons[0] if reasons else None


class CountingSocket:
    """A socket whose sends are counted (the L{LeanTLSServer}'s socket writes)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.sends = 0

    def send(self, data: Any, *flags: int) -> int:
        self.sends += 1
        return self.real.send(data, *flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class FusedConnection(Connection):
    """
    The same connection through the gateway's own transport
    (L{LeanTLSServer}: TCP and TLS in one object) over a socket pair. The
    reactor is a recorder of registrations: the harness calls C{doRead} and
    C{doWrite} as the epoll reactor would when the socket is ready.
    """

    def accept(self) -> None:
        lean = self.stack.factory.lean_tls
        assert lean is not None
        # A socket pair: what one end sends, the other can read at once.
        ours, self.theirs = socket.socketpair()
        self.theirs.setblocking(False)
        self.socket = CountingSocket(ours)
        self._to_server = b""
        self._peeked = b""
        self.eof = False
        self.tracked: Any = lean.factory.buildProtocol(CLIENT)
        self.server = lean.transport(
            self.socket, self.tracked, (CLIENT.host, CLIENT.port), None, 0, self.clock
        )
        self.server._no_delay = True  # as if inherited from a TCP listener
        self.tracked.makeConnection(self.server)

    def _ready(self, writing: bool) -> bool:
        if self.server.disconnected:
            return False
        r, w, _ = select.select([] if writing else [self.socket.real],
                                [self.socket.real] if writing else [], [], 0)  # fmt: skip
        return bool(w if writing else r)

    def turn(self) -> bool:
        """The reactor's turns while the transport has events; whether any had."""
        t, reactor, any_event = self.server, self.clock, False
        for _ in range(10_000):
            reactor.advance(0)  # each turn starts with the calls now due
            event = False
            why = None
            # As the epoll reactor: a read first, then a write unless the
            # read ended the connection.
            if t in reactor.readers and self._ready(writing=False):
                event = True
                why = t.doRead()
                if why is not None:
                    self._disconnect(why, is_read=True)
            if why is None and t in reactor.writers and self._ready(writing=True):
                event = True
                why = t.doWrite()
                if why is not None:
                    self._disconnect(why, is_read=False)
            if not event:
                return any_event
            any_event = True
        raise AssertionError("the transport never settles")

    def _disconnect(self, why: Any, is_read: bool) -> None:
        """What the reactor's _disconnectSelectable does."""
        t = self.server
        self.clock.removeReader(t)
        if (
            is_read
            and isinstance(why, ConnectionDone)
            and IHalfCloseableDescriptor.providedBy(t)
        ):
            t.readConnectionLost(Failure(why))
        else:
            self.clock.removeWriter(t)
            t.connectionLost(Failure(why))

    def feed(self, data: bytes) -> None:
        self._to_server += data
        while True:
            sent = 0
            if self._to_server:
                with contextlib.suppress(BlockingIOError):
                    sent = self.theirs.send(self._to_server)
                self._to_server = self._to_server[sent:]
            served = self.turn()
            if not self._to_server or not (sent or served):
                return  # all sent, or the gateway reads no more for now

    def fin_arrives(self) -> None:
        self.feed(b"")
        assert not self._to_server, "a FIN would overtake bytes not yet sent"
        self.theirs.shutdown(socket.SHUT_WR)
        self.turn()

    def take(self) -> bytes:
        self.turn()
        data, self._peeked = self._peeked, b""
        while True:
            try:
                chunk = self.theirs.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            data += chunk
            self.turn()  # room in the socket: the transport may write more
        return data

    def unsent(self) -> bytes:
        self._peeked = self.take()
        return self._peeked

    @property
    def tcp_producer(self) -> Any:
        return self.server.producer

    @property
    def closing(self) -> bool:
        return bool(self.server.disconnecting or self.server.disconnected)

    @property
    def aborted(self) -> bool:
        return bool(self.server._aborting)

    @property
    def writes(self) -> int:
        return self.socket.sends

    def lost(self) -> None:
        self.clock.advance(0)  # the close (or abort) due at the next turn
        self.turn()
        assert self.server.disconnected

    def close(self) -> None:
        self.theirs.close()
        self.socket.real.close()


Connect = Callable[..., Connection]


@pytest.fixture(params=["layered", "fused"])
def connect(
    request: pytest.FixtureRequest, contexts: ReloadingContextFactory, ca: trustme.CA
) -> Iterator[Connect]:
    """
    Makes connections through both TLS server sides: Twisted's TLS layer as
    tlsgate's embeddable stack uses it, and the gateway's own transport.
    """
    kind = Connection if request.param == "layered" else FusedConnection
    made: list[Connection] = []

    def make(**options: Any) -> Connection:
        made.append(kind(contexts, ca, **options))
        return made[-1]

    yield make
    for c in made:
        c.close()


VERSIONS = [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("notify", [True, False])
def test_client_finishing_first_still_gets_the_answer(
    connect: Connect,
    version: ssl.TLSVersion,
    notify: bool,
) -> None:
    c = connect(version=version)
    request = b"q" * 100_000
    c.send(request)
    if notify:
        c.close_notify()
    c.fin()
    assert c.backend.wire.value() == request
    assert c.backend.wire.write_closed  # the backend sees end of input
    assert not c.backend.wire.disconnecting
    c.backend.protocol.dataReceived(b"answer " * 1000)
    c.move()
    assert c.read() == (b"answer " * 1000, None)
    c.backend.fin()
    c.backend.closed()
    c.move()
    assert c.read() == (b"", "close_notify")
    c.tcp_closed()
    assert c.reason == CloseReason.CLIENT


@pytest.mark.parametrize("version", VERSIONS)
def test_backend_finishing_first_still_gets_what_the_client_sends(
    connect: Connect, version: ssl.TLSVersion
) -> None:
    """On TLS 1.2 too: OpenSSL reads application data after our close_notify."""
    c = connect(version=version)
    c.send(b"request")
    c.backend.protocol.dataReceived(b"first part")
    c.backend.fin()
    c.move()
    assert c.read() == (b"first part", "close_notify")
    assert not c.closing  # the client may go on sending
    more = b"m" * 200_000
    c.send(more)
    assert c.backend.wire.value() == b"request" + more
    assert not c.backend.wire.disconnecting
    c.close_notify()
    assert c.closing  # both close_notify alerts exchanged
    c.tcp_closed()
    assert c.backend.wire.disconnecting  # after the bytes it was given
    assert c.backend.wire.value() == b"request" + more
    assert c.reason == CloseReason.BACKEND


def test_backend_finishing_first_then_the_client_fin_ends_it(connect: Connect) -> None:
    c = connect()
    c.backend.fin()
    c.move()
    assert c.read() == (b"", "close_notify")
    c.send(b"late")
    c.fin()
    assert c.closing
    c.tcp_closed()
    assert c.backend.wire.value() == b"late"
    assert c.reason == CloseReason.BACKEND


@pytest.mark.parametrize("version", VERSIONS)
def test_bytes_after_the_clients_close_notify_are_dropped(
    connect: Connect, version: ssl.TLSVersion
) -> None:
    c = connect(version=version)
    c.send(b"asked")
    c.close_notify()
    c.feed(b"\x17\x03\x03\x00\x05hello" * 10_000)  # not read, not kept
    assert c.backend.wire.value() == b"asked"
    c.backend.protocol.dataReceived(b"answer")
    c.move()
    assert c.read() == (b"answer", None)
    c.backend.fin()
    c.backend.closed()
    c.move()
    assert c.read() == (b"", "close_notify")
    c.tcp_closed()
    assert c.reason == CloseReason.CLIENT


def test_a_client_that_half_closes_and_waits_forever_is_ended_when_idle(
    connect: Connect,
) -> None:
    limits = Limits(idle_timeout=30, close_grace=5)
    c = connect(limits=limits)
    c.send(b"asked")
    c.close_notify()
    assert c.backend.wire.write_closed
    c.clock.advance(29)
    assert not c.closing
    c.clock.advance(2)  # idle: the gateway closes, the client's notify is in
    c.move()
    assert c.closing
    c.tcp_closed()
    assert c.backend.wire.disconnecting
    assert c.reason == CloseReason.IDLE_TIMEOUT


def test_a_client_that_never_answers_the_backends_finish_is_ended(
    connect: Connect,
) -> None:
    limits = Limits(idle_timeout=30, close_grace=5)
    c = connect(limits=limits)
    c.backend.fin()
    c.move()
    assert c.read() == (b"", "close_notify")
    c.clock.advance(31)  # idle: a graceful close, and close_grace to answer it
    assert not c.aborted
    c.clock.advance(5)
    assert c.aborted
    c.lost()
    assert c.reason == CloseReason.IDLE_TIMEOUT


def test_a_stock_tls_layer_is_not_half_closed_with_a_bare_fin(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """Embedders' stacks without half_close keep Twisted's behaviour."""
    clock = Reactor()
    backend = BackendEndpoint()
    pool = BackendPool([Backend("b", backend)], clock=clock)
    stack = TLSStack.around(RelayFactory(pool), contexts, Limits(), clock, name="x")
    server: Any = stack.factory.buildProtocol(CLIENT)
    assert not IHalfCloseableProtocol.providedBy(server)


# -- hostile input on the half-closing TLS layer ---------------------------


def ended_before_the_handshake(c: Connection, reason: CloseReason) -> None:
    assert c.closing or c.aborted
    c.lost()
    assert c.reason == reason
    assert c.stack.tracker.handshakes_failed == 1
    assert c.backend.protocol is None  # no backend was dialled


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a ClientHello of nothing
        b"\x17\x03\x03\x40\x00" + b"\x00" * 0x4000,  # data before any hello
        b"\x16\x03\x01\xff\xff" + b"\x01" * 0xFFFF,  # a record too long
    ],
)
def test_garbage_records_end_the_connection_as_a_tls_error(
    connect: Connect, garbage: bytes
) -> None:
    c = connect(handshake=False)
    c.feed(garbage)
    ended_before_the_handshake(c, CloseReason.TLS_ERROR)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_client_hello_written_a_byte_at_a_time_completes(
    connect: Connect, version: ssl.TLSVersion
) -> None:
    c = connect(version=version, handshake=False)
    with pytest.raises(ssl.SSLWantReadError):
        c.tls.do_handshake()
    hello = c._out.read()
    for i in range(len(hello)):
        c.feed(hello[i : i + 1])
    c.handshake()
    c.send(b"ping")
    assert c.backend.wire.value() == b"ping"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("flights", [0, 1, 2])
@pytest.mark.parametrize("how", ["fin", "close_notify"])
def test_a_handshake_abandoned_at_any_step_ends_without_a_backend(
    connect: Connect,
    version: ssl.TLSVersion,
    flights: int,
    how: str,
) -> None:
    """
    The client leaves before its first flight, after it (the server has
    answered), or with its last flight half sent.
    """
    c = connect(version=version, handshake=False)
    for step in range(flights):
        with contextlib.suppress(ssl.SSLWantReadError):
            c.tls.do_handshake()  # TLS 1.3's client is done after its 2nd flight
        flight = c._out.read()
        if step == 1:
            flight = flight[: len(flight) // 2]
        c.feed(flight)
        c._in.write(c.take())
    if how == "fin":
        c.fin_arrives()
    else:
        c.feed(b"\x15\x03\x03\x00\x02\x01\x00")  # a plain alert
    if not (c.closing or c.aborted):
        c.fin_arrives()  # the alert was read; its FIN follows
    # close_notify before any hello is no TLS at all; after one, the client
    # leaves, as with a FIN.
    reason = (
        CloseReason.TLS_ERROR if how != "fin" and not flights else CloseReason.CLIENT
    )
    ended_before_the_handshake(c, reason)


def test_a_write_leaves_as_one_socket_write_per_128_kib(connect: Connect) -> None:
    """Not one socket write per 16 KiB record, as Twisted's stock loop does."""
    c = connect()
    answer = bytes(range(256)) * 4096  # 1 MiB
    before = c.writes
    c.backend.protocol.dataReceived(answer[:65536])
    assert c.writes == before + 1
    c.backend.protocol.dataReceived(answer[65536:])
    assert c.writes <= before + 1 + (len(answer) // SEND_SIZE + 1)
    c.move()
    assert c.read() == (answer, None)


def test_the_tls_layer_declares_what_the_stock_layer_would(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """Its declaration is computed once per kind of transport, with the same result."""
    first = Connection(contexts, ca)
    second = Connection(contexts, ca)
    clock = Reactor()
    pool = BackendPool([Backend("b", BackendEndpoint())], clock=clock)
    stock: Any = TLSMemoryBIOFactory(
        contexts, False, RelayFactory(pool), clock=clock
    ).buildProtocol(CLIENT)
    stock.makeConnection(Wire())
    assert set(providedBy(first.server)) == {
        *providedBy(stock),
        IHalfCloseableProtocol,
    }
    assert providedBy(second.server) == providedBy(first.server)
    tracked = first.server.wrappedProtocol
    assert ISSLTransport.providedBy(tracked)  # the application's view is unchanged
    assert IHalfCloseableProtocol.providedBy(tracked)


def test_a_client_leaving_silently_before_the_backend_answers_costs_no_backend(
    connect: Connect,
) -> None:
    """
    A TLS health check: its Finished, close_notify and FIN together; the dial
    begun at the Finished is cancelled.
    """
    c = connect(backend_at_once=False, handshake=False)
    c.handshake(then_close_notify=True)
    assert c.closing
    assert c.read() == (b"", "close_notify")
    c.tcp_closed()
    assert c.backend.cancelled == 1
    assert c.reason == CloseReason.CLIENT


def test_a_request_and_close_notify_before_the_backend_answers_are_relayed(
    connect: Connect,
) -> None:
    """They come with the Finished: in the same read as the dial begins."""
    c = connect(backend_at_once=False, handshake=False)
    c.handshake(then_send=b"early request", then_close_notify=True)
    assert not c.closing
    c.backend.complete()
    c.move()
    assert c.backend.wire.value() == b"early request"
    assert c.backend.wire.write_closed
    # The answer is held back while the client does not read, as when the
    # backend connects first (its producer is registered all the same).
    c.tcp_producer.pauseProducing()
    assert c.backend.wire.producerState == "paused"
    c.tcp_producer.resumeProducing()
    assert c.backend.wire.producerState == "producing"
    c.backend.protocol.dataReceived(b"late answer")
    c.move()
    assert c.read() == (b"late answer", None)
    c.backend.closed()
    c.move()
    assert c.read() == (b"", "close_notify")
    c.tcp_closed()
    assert c.reason == CloseReason.CLIENT


def test_what_the_client_sends_while_the_backend_is_dialled_waits_in_the_socket(
    contexts: ReloadingContextFactory, ca: trustme.CA
) -> None:
    """
    Reading the client pauses while the backend is dialled (the gateway's own
    transport, over a socket): a request and close_notify sent then are read
    once the backend connects, and reach it in order.
    """
    c = FusedConnection(contexts, ca, backend_at_once=False)
    try:
        c.send(b"request")
        c.close_notify()
        assert c.server not in c.clock.readers  # paused: left in the socket
        assert not c.closing
        c.backend.complete()
        c.move()
        assert c.backend.wire.value() == b"request"
        assert c.backend.wire.write_closed
        c.backend.protocol.dataReceived(b"answer")
        c.backend.closed()
        c.move()
        assert c.read() == (b"answer", "close_notify")
        c.tcp_closed()
        assert c.reason == CloseReason.CLIENT
    finally:
        c.close()


def test_the_backend_fin_reaches_the_relay_through_twisteds_endpoint_wrapper() -> None:
    """
    Twisted's endpoint wrapper declares only the last interface of the protocol
    it wraps; the backend protocol re-declares IHalfCloseableProtocol on it, on
    every connection (the declaration is cached after the first).
    """
    from twisted.internet.endpoints import _WrappingProtocol
    from twisted.internet.interfaces import IHandshakeListener

    from tlsgate.relay._relay import _BackendProtocol

    for _ in range(3):
        backend = _BackendProtocol(None)  # type: ignore[arg-type]
        wrapper = _WrappingProtocol(defer.Deferred(), backend)
        backend.makeConnection(Wire())
        backend.transport.protocol = wrapper  # type: ignore[union-attr]
        backend.connectionMade()
        assert IHalfCloseableProtocol.providedBy(wrapper)
        assert IHandshakeListener.providedBy(wrapper)


def end_both_ways(c: Connection) -> None:
    """The client sends close_notify and FIN, the backend ends: the TCP close."""
    c.close_notify()
    c.fin()
    c.backend.closed()
    c.move()
    c.tcp_closed()


def renewals(c: Connection) -> int:
    """Whether the connection's BIOs are due at its clock's next sweep."""
    return int(c.server in _tlscore.renewals(c.clock).due)


def bios(c: Connection) -> tuple[object, object]:
    tls = c.handle
    return tls._into_ssl, tls._from_ssl


def test_the_bios_grown_by_the_handshake_are_renewed_once_drained(
    connect: Connect,
) -> None:
    c = connect(handshake=False)
    before = bios(c)
    c.handshake()
    assert bios(c) == before  # the session tickets wait in the output BIO
    c.send(b"GET / HTTP/1.1\r\n\r\n")
    c.backend.protocol.dataReceived(b"answer")  # they leave with it
    c.move()
    assert c.read() == (b"answer", None)
    assert bios(c) == before and renewals(c) == 1  # at the next sweep
    c.clock.advance(RENEW_AFTER)
    after = bios(c)
    assert after[0] != before[0] and after[1] != before[1]
    c.send(b"more")
    c.clock.advance(RENEW_AFTER)
    assert bios(c) == after  # small reads leave them alone
    assert renewals(c) == 0
    assert c.backend.wire.value() == b"GET / HTTP/1.1\r\n\r\nmore"


def test_a_connection_that_ends_before_the_sweep_costs_no_renewal(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewed: list[object] = []
    real = _tlscore.renew
    monkeypatch.setattr(_tlscore, "renew", lambda tls: renewed.append(tls) or real(tls))
    c = connect()
    c.send(b"request")
    c.backend.protocol.dataReceived(b"answer")
    c.move()
    assert c.read() == (b"answer", None)
    assert renewals(c) == 1
    end_both_ways(c)
    assert renewals(c) == 0  # it left the sweep as it ended
    sweep = _tlscore.renewals(c.clock)
    # Not the gateway's reactor: nothing of the sweep's is left on the clock.
    assert not [d for d in c.clock.getDelayedCalls() if d.func == sweep.run]
    c.clock.advance(RENEW_AFTER)
    assert renewed == []


def test_held_tickets_keep_the_bios_until_the_first_answer_without_retries(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    TLS 1.3 tickets wait in the output BIO until the first answer: no renewal
    is tried meanwhile, however long the client is quiet; after the answer,
    the next sweep renews.
    """
    tried: list[object] = []
    real = _tlscore.renew
    monkeypatch.setattr(_tlscore, "renew", lambda tls: tried.append(tls) or real(tls))
    c = connect(handshake=False)
    before = bios(c)
    c.handshake()
    assert c.held > 0
    c.send(b"request")
    for _ in range(10):
        c.clock.advance(RENEW_AFTER)
    assert tried == [] and renewals(c) == 0 and bios(c) == before
    c.backend.protocol.dataReceived(b"answer")
    c.move()
    assert c.read() == (b"answer", None)
    assert renewals(c) == 1
    c.clock.advance(RENEW_AFTER)
    assert len(tried) == 1 and bios(c) != before


def test_one_sweep_renews_every_connection_due() -> None:
    """
    However many connections are due, their clock has one delayed call; each
    is renewed once, in the order it became due, and one that ended is not.
    """
    clock = task.Clock()
    sweep = _tlscore.Renewals(clock)
    done: list[str] = []

    class Core:
        def __init__(self, name: str) -> None:
            self.name = name

        def _renew_due(self) -> None:
            done.append(self.name)

    first, second, gone = Core("first"), Core("second"), Core("gone")
    for core in (first, gone, second, first):
        sweep.add(core)  # type: ignore[arg-type]
    sweep.discard(gone)  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(RENEW_AFTER)
    assert done == ["first", "second"]
    assert sweep.due == {} and clock.getDelayedCalls() == []


def test_tls13_session_tickets_leave_with_the_first_answer_in_one_write(
    connect: Connect,
) -> None:
    c = connect(handshake=False)
    c.handshake()
    c.send(b"request")
    assert c.unsent() == b""  # nothing sent since the server's Finished
    writes = c.writes
    c.backend.protocol.dataReceived(b"answer")
    assert c.writes == writes + 1
    c.move()
    assert c.read() == (b"answer", None)
    session = c.tls.session
    assert session is not None and session.has_ticket  # the tickets came too


def test_tls12_finishes_its_handshake_at_once(connect: Connect) -> None:
    c = connect(version=ssl.TLSVersion.TLSv1_2)  # would stall
    assert c.tls.version() == "TLSv1.2"
    c.send(b"request")
    assert c.backend.wire.value() == b"request"


def test_an_alert_after_the_handshake_is_not_held_back(connect: Connect) -> None:
    c = connect()
    c.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # fails to decrypt
    sent = c.unsent()
    assert sent  # the tickets, then the alert, went out together
    assert c.closing


def past_first_answer(connect: Connect) -> Connection:
    """A connection past its first exchange: its BIOs renewed once already."""
    c = connect()
    c.send(b"hello")
    c.backend.protocol.dataReceived(b"hi")
    c.move()
    assert c.read() == (b"hi", None)
    c.clock.advance(RENEW_AFTER)  # the first sweep settles them
    return c


def test_after_a_burst_the_bios_are_renewed_at_the_next_sweep(connect: Connect) -> None:
    c = past_first_answer(connect)
    settled = bios(c)
    c.backend.protocol.dataReceived(b"b" * 100_000)  # a burst to the client
    c.move()
    assert c.read() == (b"b" * 100_000, None)
    assert bios(c) == settled  # not during the burst
    c.clock.advance(RENEW_AFTER)
    renewed = bios(c)
    assert renewed[0] != settled[0] and renewed[1] != settled[1]
    c.send(b"still works")
    assert c.backend.wire.value() == b"hellostill works"
    c.backend.protocol.dataReceived(b"and back")
    c.move()
    assert c.read() == (b"and back", None)


def test_a_record_split_across_a_renewal_arrives_whole_and_the_renewal_ends_with_the_connection(
    connect: Connect,
) -> None:
    c = past_first_answer(connect)
    c.send(b"u" * 50_000)  # a burst from the client
    # Half a record arrives before the renewal is due: OpenSSL keeps the part
    # it read, and the rest comes through the fresh BIO.
    c.tls.write(b"split record")
    wire = c._out.read()
    c.feed(wire[:10])
    c.clock.advance(RENEW_AFTER)
    c.feed(wire[10:])
    assert c.backend.wire.value() == b"hello" + b"u" * 50_000 + b"split record"
    c.send(b"x" * 10_000)
    assert renewals(c) == 1
    end_both_ways(c)
    assert renewals(c) == 0  # the due renewal went with it


def test_without_pyopenssls_bio_internals_nothing_is_held(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlsgate import _membio

    monkeypatch.setattr(_membio, "FROM", "_renamed_in_some_pyopenssl")
    c = connect()
    assert c.held == 0
    c.send(b"request")
    c.backend.fin()  # finishes without a word: close_notify must still go out
    c.move()
    assert c.read() == (b"", "close_notify")
