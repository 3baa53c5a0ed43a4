"""
The gateway's lean TCP transports (L{tlsgate._tcp}): the stock transports'
behaviour with fewer system calls. Socket pairs and loopback sockets stand
in for connections; the reactor is a recorder of registrations (no global
reactor), and connects are completed by calling C{doWrite} as the reactor
would once the socket is writable.
"""

from __future__ import annotations

import _socket
import errno
import gc
import os
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error, task, tcp
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tests.helpers import Reactor
from tlsgate import _batch, _tcp
from tlsgate._dispatch import lean_dispatch
from tlsgate._tcp import (
    MAX_READ,
    LeanClient,
    LeanDialledClient,
    LeanPort,
    LeanServer,
    lean_transport_on,
    use_lean_transports,
)
from tlsgate.relay import Backend, BackendPool
from tlsgate.relay._backends import direct_address


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.made = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


class OneProtocol(Factory):
    """Builds one L{Recorder} (or none), counting doStart and doStop."""

    def __init__(self, build: bool = True) -> None:
        self.built = Recorder()
        self.build = build
        self.starts = self.stops = 0

    def doStart(self) -> None:
        self.starts += 1

    def doStop(self) -> None:
        self.stops += 1

    def buildProtocol(self, addr: Any) -> Recorder | None:  # type: ignore[override]
        return self.built if self.build else None


class Sock:
    """A socket that records the calls a transport makes."""

    family = socket.AF_INET

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args: Any) -> Any:
            self.calls.append(name)
            return attr(*args)

        return call


@pytest.fixture
def pair() -> Iterator[tuple[LeanServer, socket.socket, Reactor, Recorder]]:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reactor = Reactor()
    protocol = Recorder()
    transport = LeanServer(ours, protocol, ("a", 1), None, 1, reactor)
    protocol.makeConnection(transport)
    yield transport, theirs, reactor, protocol
    ours.close()
    theirs.close()


def read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_a_write_with_nothing_queued_is_sent_without_registering(
    pair: tuple[LeanServer, socket.socket, Reactor, Recorder],
) -> None:
    transport, theirs, reactor, _ = pair
    transport.write(b"hello")
    assert reactor.writers == set()
    assert read_all(theirs) == b"hello"


def test_what_the_kernel_does_not_take_is_queued_in_order(
    pair: tuple[LeanServer, socket.socket, Reactor, Recorder],
) -> None:
    transport, theirs, reactor, _ = pair
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    transport.write(big)
    assert reactor.writers == {transport}  # the rest waits for writability
    transport.write(b"after")  # queued behind it, never sent ahead
    received = read_all(theirs)
    while reactor.writers:
        transport.doWrite()
        received += read_all(theirs)
    assert received == big + b"after"


def test_a_pause_resumed_before_any_data_touches_no_registration(
    pair: tuple[LeanServer, socket.socket, Reactor, Recorder],
) -> None:
    transport, theirs, reactor, protocol = pair
    before = reactor.changes
    transport.pauseProducing()
    transport.resumeProducing()
    assert reactor.changes == before
    assert transport in reactor.readers
    theirs.sendall(b"x")
    transport.doRead()
    assert protocol.data == b"x"


def read_while_paused(
    transport: LeanServer, theirs: socket.socket, reactor: Reactor
) -> None:
    """Pause; the client sends; the reactor's read stops reading instead."""
    transport.pauseProducing()
    theirs.sendall(b"request")
    transport.doRead()  # the reactor saw it readable
    assert transport not in reactor.readers  # and now stops watching


def test_a_second_pause_after_reading_stopped_is_undone_by_one_resume(
    pair: tuple[LeanServer, socket.socket, Reactor, Recorder],
) -> None:
    """Pause, a read that stops reading, pause again, resume: reading again."""
    transport, theirs, reactor, protocol = pair
    read_while_paused(transport, theirs, reactor)
    transport.pauseProducing()  # e.g. the tracker closing a paused client
    transport.resumeProducing()
    assert transport in reactor.readers
    transport.doRead()
    assert protocol.data == b"request"


def test_data_arriving_while_paused_stays_unread_until_resumed(
    pair: tuple[LeanServer, socket.socket, Reactor, Recorder],
) -> None:
    transport, theirs, reactor, protocol = pair
    read_while_paused(transport, theirs, reactor)
    assert protocol.data == b""
    transport.resumeProducing()
    assert transport in reactor.readers
    transport.doRead()
    assert protocol.data == b"request"


def test_a_close_with_nothing_queued_closes_next_turn_without_registering() -> None:
    ours, theirs = socket.socketpair()
    sock = Sock(ours)
    reactor = Reactor()
    protocol = Recorder()
    transport = LeanServer(sock, protocol, ("a", 1), None, 1, reactor)  # type: ignore[arg-type]
    protocol.makeConnection(transport)
    sock.calls.clear()
    before = reactor.changes
    transport.loseConnection()
    assert reactor.changes == before and protocol.lost is None
    theirs.sendall(b"late")
    transport.doRead()  # still registered this turn: nothing more is read
    assert protocol.data == b""
    reactor.advance(0)  # the next turn
    assert sock.calls == ["close"]  # no send(b""), no shutdown()
    assert protocol.lost is not None and protocol.lost.check(error.ConnectionDone)
    assert reactor.readers == set() and reactor.writers == set()
    with pytest.raises(ConnectionResetError):  # unread input: a reset, as ever
        read_all(theirs)
    theirs.close()


def test_what_is_written_after_a_close_is_flushed_before_it() -> None:
    ours, theirs = socket.socketpair()
    reactor = Reactor()
    protocol = Recorder()
    transport = LeanServer(ours, protocol, ("a", 1), None, 1, reactor)
    protocol.makeConnection(transport)
    transport.loseConnection()
    transport.write(b"last words")  # queued: the connection is closing
    reactor.advance(0)
    assert protocol.lost is None and reactor.writers == {transport}
    why = transport.doWrite()
    transport.connectionLost(Failure(why))
    assert read_all(theirs) == b"last words"
    assert protocol.lost is not None and protocol.lost.check(error.ConnectionDone)
    theirs.close()


def test_connections_closed_in_one_turn_share_one_call() -> None:
    reactor = Reactor()
    pairs = [socket.socketpair() for _ in range(3)]
    transports = [
        LeanServer(a, Recorder(), ("a", 1), None, 1, reactor) for a, _ in pairs
    ]
    for t in transports:
        t.protocol.makeConnection(t)
        t.loseConnection()
    assert len(reactor.getDelayedCalls()) == 1
    reactor.advance(0)
    assert all(t.disconnected for t in transports)
    for a, b in pairs:
        a.close()
        b.close()


def test_accepted_connections_inherit_no_delay_from_the_listener() -> None:
    reactor = Reactor()
    port = tcp.Port(
        0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=reactor
    )  # type: ignore[arg-type]
    port.startListening()
    try:
        use_lean_transports(port)
        assert port.transport is LeanServer
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        accepted, addr = port.socket.accept()
        sock = Sock(accepted)
        transport = LeanServer(sock, Protocol(), addr, port, 1, reactor)  # type: ignore[arg-type]
        assert transport.getTcpNoDelay()
        sock.calls.clear()
        transport.setTcpNoDelay(True)
        assert sock.calls == []  # known to be on: no system call
        transport.setTcpNoDelay(False)
        assert not transport.getTcpNoDelay()
        client.close()
        accepted.close()
    finally:
        port.socket.close()


class Built(Factory):
    """Builds L{Recorder}s, or nothing for the peers it is told to refuse."""

    def __init__(self, refuse: int = 0) -> None:
        self.built: list[Recorder] = []
        self.refuse = refuse

    def buildProtocol(self, addr: Any) -> Recorder | None:  # type: ignore[override]
        if self.refuse:
            self.refuse -= 1
            return None
        self.built.append(Recorder())
        return self.built[-1]


@pytest.fixture
def lean_port() -> Iterator[tuple[tcp.Port, Built]]:
    factory = Built()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=Reactor())  # type: ignore[arg-type]
    port.startListening()
    use_lean_transports(port)
    yield port, factory
    port.socket.close()


def test_the_lean_accept_loop_takes_every_waiting_connection(
    lean_port: tuple[tcp.Port, Built],
) -> None:
    port, factory = lean_port
    assert type(port) is LeanPort
    address = ("127.0.0.1", port.getHost().port)
    clients = [socket.create_connection(address) for _ in range(3)]
    port.doRead()
    assert len(factory.built) == 3
    transports = [p.transport for p in factory.built]
    assert all(type(t) is LeanServer for t in transports)
    assert [t.sessionno for t in transports] == [0, 1, 2]  # type: ignore[attr-defined]
    assert {t.getPeer().port for t in transports} == {  # type: ignore[attr-defined]
        c.getsockname()[1] for c in clients
    }
    assert all(p.made for p in factory.built)
    # Fewer than it tried: next time it tries no more than it found (the
    # stock loop's scaling), so a lone connection costs no failed accept().
    assert port.numberAccepts == 3
    port.doRead()  # nothing waiting: nothing built, no error
    assert len(factory.built) == 3
    assert port.numberAccepts == 1
    for c in clients:
        c.close()
    for t in transports:
        t.socket.close()  # type: ignore[attr-defined]


def test_the_gateways_sockets_are_the_c_type_with_numbers_for_family(
    lean_port: tuple[tcp.Port, Built], listener: socket.socket
) -> None:
    """
    Accepted sockets, and backends dialled for the gateway's relay, are
    _socket.socket, not the Python subclass (whose __init__ and close are
    Python frames): the family is a plain number, equal to the enum, and
    close() works as on any socket.
    """
    port, factory = lean_port
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    port.doRead()
    [accepted] = [p.transport for p in factory.built]
    dialled = LeanClient.dial(
        Reactor(), listener.getsockname(), OneProtocol(), lambda t, f: None,
        c_socket=True,
    )  # fmt: skip
    for transport in (accepted, dialled):
        sock: Any = transport.socket  # type: ignore[attr-defined]
        assert type(sock) is _socket.socket
        assert sock.family == socket.AF_INET and type(sock.family) is int
        sock.close()
        assert sock.fileno() == -1
    client.close()


def connect_dials(reactor: Reactor) -> None:
    """The turn a dial is watched from, then each waiting dial connected."""
    reactor.advance(0)
    for transport in list(reactor.writers):
        writable(transport)
        transport.doWrite()


def dialled_handle(listener: socket.socket, **options: Any) -> Any:
    """
    The socket a protocol dialled through a pool gets from getHandle(),
    closed once the protocol let go of its connection.
    """
    reactor = Reactor()
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", 1)  # type: ignore[arg-type]
    pool = BackendPool(
        [Backend("live", ep, listener.getsockname())],
        clock=reactor, reactor=reactor, **options,
    )  # fmt: skip
    results: list[Any] = []
    pool.dial(Factory.forProtocol(Recorder), lambda p, f: results.append(p))
    connect_dials(reactor)
    [protocol] = results
    handle = protocol.transport.getHandle()
    protocol.transport.loseConnection()
    reactor.advance(0)  # the close
    assert handle.fileno() == -1
    return handle


def test_an_embedders_pool_gives_its_protocols_a_python_socket(
    listener: socket.socket,
) -> None:
    """
    A pool built as an embedder builds it hands a protocol the socket
    Twisted's transports do (makefile, enums, with...); the gateway's own
    pools (c_sockets=True, build_pool) the C type.
    """
    handle = dialled_handle(listener)
    assert isinstance(handle, socket.socket)
    assert handle.family is socket.AddressFamily.AF_INET
    assert type(dialled_handle(listener, c_sockets=True)) is _socket.socket


def test_a_connection_no_protocol_is_built_for_is_closed(
    lean_port: tuple[tcp.Port, Built],
) -> None:
    port, factory = lean_port
    factory.refuse = 1
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.settimeout(5)
    port.doRead()
    assert factory.built == []
    assert client.recv(1) == b""  # closed at once
    client.close()


class FailingAccepts:
    """A listening socket whose next accept() calls raise the given errors."""

    def __init__(self, real: socket.socket, *errors: OSError) -> None:
        self.real = real
        self.errors = list(errors)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def accept(self) -> Any:
        if self.errors:
            error = self.errors.pop(0)
            if error is not None:
                raise error
        return self.real.accept()


def connect(port: tcp.Port, n: int) -> list[socket.socket]:
    return [
        socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(n)
    ]


def close_all(clients: list[socket.socket], factory: Built) -> None:
    for c in clients:
        c.close()
    for p in factory.built:
        p.transport.socket.close()  # type: ignore[union-attr]


def test_a_full_batch_makes_the_next_one_larger(
    lean_port: tuple[tcp.Port, Built],
) -> None:
    port, factory = lean_port
    port.numberAccepts = 2
    clients = connect(port, 3)
    port.doRead()
    assert len(factory.built) == 2 and port.numberAccepts == 22  # as the stock loop
    port.doRead()
    assert len(factory.built) == 3
    close_all(clients, factory)


def test_a_protocol_that_fails_leaves_the_batch_size_and_the_rest_waiting(
    lean_port: tuple[tcp.Port, Built], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, factory = lean_port
    logged: list[object] = []
    monkeypatch.setattr("tlsgate._tcp.log.deferr", lambda: logged.append(1))
    real_build = factory.buildProtocol
    calls = []

    def build(addr: Any) -> Recorder | None:
        calls.append(addr)
        if len(calls) == 2:
            raise RuntimeError("a broken factory")
        return real_build(addr)

    factory.buildProtocol = build  # type: ignore[method-assign]
    clients = connect(port, 4)
    port.doRead()
    assert len(factory.built) == 1 and logged == [1]
    assert port.numberAccepts == 100  # left as it was, as the stock loop does
    port.doRead()  # the two behind it were left in the backlog, not lost
    assert len(factory.built) == 3
    close_all(clients, factory)


def test_a_firewall_refusal_is_skipped_within_the_batch(
    lean_port: tuple[tcp.Port, Built],
) -> None:
    port, factory = lean_port
    real = port.socket
    port.socket = FailingAccepts(real, OSError(errno.EPERM, "refused"))  # type: ignore[assignment]
    clients = connect(port, 2)
    port.doRead()
    port.socket = real
    assert len(factory.built) == 2  # the refusal cost one attempt, not the wake-up
    close_all(clients, factory)


def test_an_error_mid_batch_hands_the_rest_of_the_batch_to_the_stock_loop(
    lean_port: tuple[tcp.Port, Built],
) -> None:
    port, factory = lean_port
    real = port.socket
    port.socket = FailingAccepts(  # type: ignore[assignment]
        real, None, OSError(errno.ECONNABORTED, "Software caused connection abort")
    )
    clients = connect(port, 3)
    port.doRead()
    port.socket = real
    assert len(factory.built) == 3  # one by the lean loop, two by the stock one
    assert all(type(p.transport) is LeanServer for p in factory.built)
    assert port.numberAccepts == 3  # what the two loops took together
    close_all(clients, factory)


def test_an_ipv6_peer_keeps_its_address() -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    factory = Built()
    port = tcp.Port(0, factory, interface="::1", reactor=Reactor())  # type: ignore[arg-type]
    port.startListening()
    use_lean_transports(port)
    client = socket.create_connection(("::1", port.getHost().port))
    port.doRead()
    (built,) = factory.built
    peer = built.transport.getPeer()  # type: ignore[union-attr]
    assert (peer.host, peer.port) == ("::1", client.getsockname()[1])
    close_all([client], factory)
    port.socket.close()


def test_an_accept_error_is_left_to_the_stock_loop(
    lean_port: tuple[tcp.Port, Built],
) -> None:
    """C{EMFILE} and the like: Twisted's own loop handles and logs them."""
    port, factory = lean_port
    real = port.socket
    failures = [OSError(errno.EMFILE, "Too many open files")]

    class Failing:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def accept(self) -> Any:
            if failures:
                raise failures.pop()
            return real.accept()

    port.socket = Failing()  # type: ignore[assignment]
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    port.doRead()  # the lean loop fails, the stock loop accepts
    port.socket = real
    assert len(factory.built) == 1
    assert type(factory.built[0].transport) is LeanServer
    client.close()
    factory.built[0].transport.socket.close()  # type: ignore[union-attr]


def test_other_ports_and_clients_are_left_alone() -> None:
    other = object()
    use_lean_transports(other)
    lean_transport_on(other)
    assert type(other) is object

    class Client(tcp.Client):
        def __init__(self) -> None:
            pass

    stock = Client()
    lean_transport_on(stock)
    assert type(stock) is Client  # only the stock class itself is switched
    plain = tcp.Client.__new__(tcp.Client)
    lean_transport_on(plain)
    assert type(plain) is LeanDialledClient


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def writable(transport: LeanClient) -> None:
    select.select([], [transport.socket], [], 5)


def test_a_dial_connects_the_protocol_then_reports(listener: socket.socket) -> None:
    reactor = Reactor()
    factory = OneProtocol()
    protocol = factory.built
    results: list[Any] = []
    address = listener.getsockname()
    client = LeanClient.dial(
        reactor, address, factory, lambda t, f: results.append((t, f)), timeout=5
    )
    assert reactor.writers == set()  # the reactor's own loop: from the next turn
    reactor.advance(0)
    assert reactor.writers == {client} and results == []
    assert not protocol.made  # built only once connected
    writable(client)
    client.doWrite()
    assert results == [(client, None)] and protocol.made
    assert reactor.readers == {client} and reactor.writers == set()
    assert waiting(reactor) == []  # its timeout is gone
    assert client.getPeer().port == address[1]
    assert client.getTcpNoDelay()
    accepted, _ = listener.accept()
    client.write(b"GET")
    assert accepted.recv(10) == b"GET"
    accepted.close()
    assert (factory.starts, factory.stops) == (1, 0)
    client.connectionLost(Failure(error.ConnectionDone()))
    assert (factory.starts, factory.stops) == (1, 1) and protocol.lost is not None


def test_a_refused_dial_reports_the_error_and_closes(listener: socket.socket) -> None:
    address = listener.getsockname()
    listener.close()  # nothing listens there any more
    reactor = Reactor()
    factory = OneProtocol()
    results: list[Any] = []
    client = LeanClient.dial(
        reactor, address, factory, lambda t, f: results.append((t, f))
    )
    if not results:
        writable(client)
        client.doWrite()
    [(transport, reason)] = results
    assert transport is None and reason.check(error.ConnectionRefusedError)
    assert not factory.built.made and reactor.writers == set()
    assert client.socket.fileno() == -1
    assert (factory.starts, factory.stops) == (1, 1)


def test_no_socket_to_be_had_is_a_failed_dial_not_an_exception(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_descriptors(*args: Any, **kwargs: Any) -> socket.socket:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(socket, "socket", out_of_descriptors)
    results: list[Any] = []
    client = LeanClient.dial(
        Reactor(), listener.getsockname(), OneProtocol(),
        lambda t, f: results.append((t, f)),
    )  # fmt: skip
    [(transport, reason)] = results
    assert transport is None and reason.check(error.ConnectBindError)
    client.cancel()  # harmless


def test_a_factory_that_builds_nothing_fails_the_dial(listener: socket.socket) -> None:
    reactor = Reactor()
    factory = OneProtocol(build=False)
    results: list[Any] = []
    client = LeanClient.dial(
        reactor, listener.getsockname(), factory, lambda t, f: results.append((t, f))
    )
    writable(client)
    client.doWrite()
    [(transport, reason)] = results
    assert transport is None and reason.check(error.NoProtocol)
    assert client.socket.fileno() == -1 and (factory.starts, factory.stops) == (1, 1)


def waiting(reactor: Reactor) -> list[float]:
    """The deadlines of the attempts dialled on C{reactor} still waiting for one."""
    return sorted(
        deadline
        for (clock, _), deadlines in _tcp._DEADLINES.items()
        if clock is reactor
        for deadline in deadlines.pending.values()
    )


def dial_slowly(
    reactor: Reactor, listener: socket.socket, results: list[Any]
) -> LeanClient:
    """A dial with a 2 s timeout that nothing completes (no doWrite is called)."""
    client = LeanClient.dial(
        reactor, listener.getsockname(), OneProtocol(),
        lambda t, f: results.append((t, f)), timeout=2,
    )  # fmt: skip
    reactor.advance(0)  # watched from the next turn
    return client


def test_a_dial_that_does_not_connect_in_time_fails_with_a_timeout(
    listener: socket.socket,
) -> None:
    reactor = Reactor()
    results: list[Any] = []
    client = dial_slowly(reactor, listener, results)
    reactor.advance(2)
    [(transport, reason)] = results
    assert transport is None and reason.check(error.TimeoutError)
    assert reactor.writers == set() and client.socket.fileno() == -1
    client.doWrite()  # a late writability event changes nothing
    assert len(results) == 1


def test_attempts_with_one_timeout_share_one_delayed_call(
    listener: socket.socket,
) -> None:
    """
    However many attempts wait, their clock has one delayed call: each
    attempt times out at its own deadline, in turn, and one that connected
    or was cancelled meanwhile does not.
    """
    reactor = Reactor()
    results: list[Any] = []
    first = dial_slowly(reactor, listener, results)
    reactor.advance(0.5)
    cancelled = dial_slowly(reactor, listener, results)
    connected = dial_slowly(reactor, listener, results)
    reactor.advance(0.5)
    last = dial_slowly(reactor, listener, results)
    assert len(reactor.getDelayedCalls()) == 1
    cancelled.cancel()
    writable(connected)
    connected.doWrite()
    assert results == [(connected, None)]
    assert waiting(reactor) == [2, 3]
    reactor.advance(1)  # t=2: the first is due
    assert [t for t, _ in results[1:]] == [None] and results[1][1].check(
        error.TimeoutError
    )
    assert first.socket.fileno() == -1 and last.socket.fileno() != -1
    [call] = reactor.getDelayedCalls()
    assert call.getTime() == 3  # the next deadline
    reactor.advance(1)
    assert len(results) == 3 and last.socket.fileno() == -1
    assert waiting(reactor) == [] and reactor.getDelayedCalls() == []
    connected.abortConnection()
    reactor.advance(0)


def test_a_dial_made_as_another_times_out_adds_no_second_delayed_call() -> None:
    """
    An attempt that times out makes its caller dial again (failover to the
    next backend), from inside the expiry: the clock still has one delayed
    call, at the first deadline left, however often that happens.
    """
    clock = task.Clock()
    deadlines = _tcp._deadlines(clock, 5.0)
    timed_out: list[str] = []

    class Attempt:
        def __init__(self, name: str, redial: bool) -> None:
            self.name, self.redial = name, redial

        def _timed_out(self) -> None:
            timed_out.append(self.name)
            if self.redial:
                deadlines.add(Attempt(self.name + "'", False))  # type: ignore[arg-type]

    for i in range(10):
        deadlines.add(Attempt(f"a{i}", True))  # type: ignore[arg-type]
        clock.advance(1)
        assert len(clock.getDelayedCalls()) == 1
    # Due at 5 to 10, in the order they were dialled: a0' (a0's redial, at 5)
    # before a5 (dialled after it).
    assert timed_out == ["a0", "a1", "a2", "a3", "a4", "a0'", "a5"]
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 11  # a1' (a redial): its deadline, the first left
    for _ in range(5):
        clock.advance(1)
        assert len(clock.getDelayedCalls()) == 1
    assert timed_out[7:] == ["a1'", "a6", "a2'", "a7", "a3'", "a8", "a4'", "a9", "a5'"]
    clock.advance(10)
    assert len(timed_out) == 20 and clock.getDelayedCalls() == []
    assert deadlines.pending == {}


@pytest.mark.parametrize("lingering", [False, True])
def test_an_embedders_clock_keeps_no_call_once_no_attempt_waits(
    lingering: bool,
) -> None:
    """
    Once the last attempt connected or was cancelled, the shared call is
    cancelled, so an embedder's (or a test's) reactor is left clean; the
    gateway's own reactor keeps it (_batch.linger) until it fires.
    """
    clock = task.Clock()
    if lingering:
        _batch.linger(clock)
    deadlines = _tcp._deadlines(clock, 5.0)
    first, second = object(), object()
    deadlines.add(first)  # type: ignore[arg-type]
    deadlines.add(second)  # type: ignore[arg-type]
    deadlines.discard(first)  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) == 1
    deadlines.discard(second)  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) == (1 if lingering else 0)
    clock.advance(5)
    assert clock.getDelayedCalls() == []
    _batch.LINGERING.discard(clock)


def test_a_cancelled_dial_reports_nothing_and_closes(listener: socket.socket) -> None:
    reactor = Reactor()
    results: list[Any] = []
    client = dial_slowly(reactor, listener, results)
    client.cancel()
    assert results == [] and reactor.writers == set()
    assert waiting(reactor) == [] and client.socket.fileno() == -1


def test_only_plain_tcp_endpoints_to_an_ip_address_are_dialled_directly() -> None:
    reactor = Reactor()
    assert direct_address(TCP4ClientEndpoint(reactor, "127.0.0.1", 80)) == (
        "127.0.0.1",
        80,
    )  # type: ignore[arg-type]
    assert direct_address(TCP4ClientEndpoint(reactor, "backend.internal", 80)) is None  # type: ignore[arg-type]
    bound = TCP4ClientEndpoint(reactor, "127.0.0.1", 80, bindAddress=("127.0.0.2", 0))  # type: ignore[arg-type]
    assert direct_address(bound) is None
    assert direct_address(HostnameEndpoint(reactor, "127.0.0.1", 80)) is None  # type: ignore[arg-type]


def test_the_pool_fails_over_from_a_refused_direct_backend(
    listener: socket.socket,
) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_address = dead.getsockname()
    dead.close()
    reactor = Reactor()
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", 1)  # type: ignore[arg-type]
    pool = BackendPool(
        [Backend("dead", ep, dead_address), Backend("live", ep, listener.getsockname())],
        clock=reactor, reactor=reactor,
    )  # fmt: skip
    results: list[Any] = []
    pool.dial(Factory.forProtocol(Recorder), lambda p, f: results.append((p, f)))
    for _ in range(2):
        connect_dials(reactor)
    [(protocol, reason)] = results
    assert reason is None and isinstance(protocol, Recorder) and protocol.made
    assert pool.connect_failures == {"dead": 1} and pool.is_down("dead")
    protocol.transport.loseConnection()  # type: ignore[union-attr]


def test_an_abort_after_a_close_still_aborts() -> None:
    ours, theirs = socket.socketpair()
    reactor = Reactor()
    protocol = Recorder()
    transport = LeanServer(ours, protocol, ("a", 1), None, 1, reactor)
    protocol.makeConnection(transport)
    transport.loseConnection()  # queued to close next turn
    transport.abortConnection()
    reactor.advance(0)  # both the closer's call and the abort's
    assert protocol.lost is not None and protocol.lost.check(error.ConnectionAborted)
    theirs.close()


def test_a_direct_backend_keeps_its_endpoints_own_timeout() -> None:
    reactor = Reactor()
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", 80, timeout=2)  # type: ignore[arg-type]
    backend = Backend.of("tcp:127.0.0.1:80:timeout=2", ep)
    assert backend.address == ("127.0.0.1", 80) and backend.timeout == 2
    dialled: list[float] = []
    pool = BackendPool([backend], clock=reactor, connect_timeout=5, reactor=reactor)
    pool.dial(Factory.forProtocol(Recorder), lambda p, f: dialled.append(1))
    assert waiting(reactor) == [
        2
    ]  # the shorter of the pool's 5 s and the endpoint's 2 s
    unlimited = BackendPool(
        [backend], clock=reactor, connect_timeout=0, reactor=reactor
    )
    unlimited.dial(Factory.forProtocol(Recorder), lambda p, f: dialled.append(1))
    assert waiting(reactor) == [2, 2]  # 0: the endpoint's own, still
    reactor.advance(2)
    assert len(dialled) == 2


# -- on Twisted's epoll reactor (a private instance, polled by hand) ----------


class RecordingPoller:
    """An epoll object that records the changes made to its set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.changes: list[tuple[Any, ...]] = []

    def register(self, fd: int, events: int) -> None:
        self.changes.append(("register", fd, events))
        self.real.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self.changes.append(("modify", fd, events))
        self.real.modify(fd, events)

    def unregister(self, fd: int) -> None:
        self.changes.append(("unregister", fd))
        self.real.unregister(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture(params=["stock", "lean"])
def epoll(request: pytest.FixtureRequest) -> Iterator[EPollReactor]:
    """Twisted's epoll reactor, with its own loop or lean_dispatch's."""
    r = EPollReactor()
    if request.param == "lean":
        assert lean_dispatch(r)
    yield r
    r._poller.close()  # type: ignore[attr-defined]


class CountingSocket(socket.socket):
    connects = 0

    def connect_ex(self, address: Any) -> int:
        CountingSocket.connects += 1
        return super().connect_ex(address)


def poll_until(reactor: EPollReactor, results: list[Any]) -> None:
    for _ in range(20):
        if results:
            return
        reactor.runUntilCurrent()  # as the reactor's loop does between polls
        reactor.doPoll(0.5)  # type: ignore[attr-defined]
    raise AssertionError("the dial never completed")


def test_on_epoll_a_dial_connects_with_one_change_to_the_set(
    epoll: EPollReactor, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "socket", CountingSocket)
    CountingSocket.connects = 0
    factory = OneProtocol()
    results: list[Any] = []
    client = LeanClient.dial(
        epoll, listener.getsockname(), factory,
        lambda t, f: results.append((t, f)), timeout=5, clock=task.Clock(),
    )  # fmt: skip
    fd = client.fileno()
    epoll.runUntilCurrent()  # the reactor's own loop watches it from the next turn
    poller = RecordingPoller(epoll._poller)  # type: ignore[attr-defined]
    epoll._poller = poller  # type: ignore[attr-defined]
    poll_until(epoll, results)
    assert results == [(client, None)] and factory.built.made
    # Under lean_dispatch, the dial's own connect() only: writability said
    # the rest. The reactor's own loop keeps Twisted's second connect().
    lean = hasattr(epoll, "_tlsgate_polls")
    assert CountingSocket.connects == (1 if lean else 2)
    # From writing to reading in one modification, the reactor's sets agreeing.
    assert poller.changes == [("modify", fd, EPollReactor._POLL_IN)]
    assert fd in epoll._reads and fd not in epoll._writes  # type: ignore[attr-defined]
    accepted, _ = listener.accept()
    accepted.sendall(b"answer")
    for _ in range(20):
        if factory.built.data:
            break
        epoll.doPoll(0.5)  # type: ignore[attr-defined]
    assert factory.built.data == b"answer"
    accepted.close()
    client.abortConnection()


def test_on_epoll_a_refused_dial_is_reported_with_its_error(
    epoll: EPollReactor, listener: socket.socket
) -> None:
    address = listener.getsockname()
    listener.close()  # nothing listens there any more
    factory = OneProtocol()
    results: list[Any] = []
    client = LeanClient.dial(
        epoll, address, factory, lambda t, f: results.append((t, f))
    )
    poll_until(epoll, results)
    [(transport, reason)] = results
    assert transport is None and reason.check(error.ConnectionRefusedError)
    assert not factory.built.made and client.socket.fileno() == -1
    assert (factory.starts, factory.stops) == (1, 1)
    assert client not in epoll._selectables.values()  # type: ignore[attr-defined]


def test_a_writability_event_from_the_dials_own_batch_is_checked() -> None:
    """
    The loop handles a batch's events one after another: an earlier handler
    may close a socket whose event is still to come, and a dial may get the
    same descriptor number. That event is not the dial's: it must not be
    taken for a completed connect.
    """
    epoll = EPollReactor()
    assert lean_dispatch(epoll)
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    # One connection fills a backlog of 0: the next SYN is dropped, and the
    # dial waits in SYN_SENT.
    filler = socket.create_connection(full.getsockname())
    results: list[Any] = []
    try:
        client = LeanClient.dial(
            epoll, full.getsockname(), OneProtocol(),
            lambda t, f: results.append((t, f)), timeout=5, clock=task.Clock(),
        )  # fmt: skip
        client.doWrite()  # a stale EPOLLOUT, in the batch that dialled it
        assert results == [] and not client.connected
        assert client.socket.fileno() != -1  # still trying
        client.cancel()
    finally:
        filler.close()
        full.close()
        epoll._poller.close()  # type: ignore[attr-defined]


class Replayed:
    """An epoll object whose next C{poll()} returns the batch it is given."""

    def __init__(self, real: Any, events: list[tuple[int, int]]) -> None:
        self.real = real
        self.events = events

    def poll(self, timeout: float, n: int) -> list[tuple[int, int]]:
        events, self.events = self.events, []
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Handler:
    """A readable descriptor whose event runs C{act}: an earlier handler."""

    def __init__(self, sock: socket.socket, act: Any) -> None:
        self.socket = sock
        self.act = act

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        self.act()

    def logPrefix(self) -> str:
        return "handler"

    def connectionLost(self, reason: Any) -> None:
        pass


#: What a refused or reset dial's socket reports (it is watched for writing).
REFUSED_EVENT = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


@pytest.fixture
def stalled() -> Iterator[tuple[Any, ...]]:
    """A listener whose backlog is full: a dial to it waits in SYN_SENT."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    yield full.getsockname()
    filler.close()
    full.close()


def stalled_dial(
    reactor: EPollReactor,
    address: tuple[Any, ...],
    reported: list[Any],
    factory: OneProtocol | None = None,
) -> LeanClient:
    """A dial to C{address} (the stalled listener); what it reports, kept."""
    return LeanClient.dial(
        reactor, address, factory or OneProtocol(),
        lambda t, f: reported.append((t, f)), timeout=5, clock=task.Clock(),
    )  # fmt: skip


@pytest.fixture
def lean_listening() -> Iterator[tuple[EPollReactor, tcp.Port, Built, socket.socket]]:
    """
    An epoll reactor under lean_dispatch, a lean port on it and a client
    waiting to be accepted there.
    """
    epoll = EPollReactor()
    assert lean_dispatch(epoll)
    factory = Built()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=epoll)
    port.startListening()
    use_lean_transports(port)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    yield epoll, port, factory, client
    for built in factory.built:
        built.transport.abortConnection()  # type: ignore[union-attr]
    client.close()
    port.socket.close()
    epoll._poller.close()  # type: ignore[attr-defined]


def replay(
    epoll: EPollReactor, act: Any, events: list[tuple[int, int]], reused: int
) -> None:
    """
    Hand C{epoll}'s loop one batch: a handler's event, which runs C{act},
    then C{events}, as epoll reported them before the handler ran.

    The handler closes sockets and makes new ones, which are to take the
    closed ones' numbers: every free number below C{reused} (the highest
    of them) is taken meanwhile, and the collector held off, so that the
    closed ones are the lowest free (Linux hands out the lowest).
    """
    a, b = socket.socketpair()
    handler = Handler(a, act)
    epoll.addReader(handler)
    epoll._poller = Replayed(  # type: ignore[attr-defined]
        epoll._poller,  # type: ignore[attr-defined]
        [(a.fileno(), select.EPOLLIN), *events],
    )
    gc.collect()
    gc.disable()
    plugs: list[int] = []
    try:
        while (plug := os.open(os.devnull, os.O_RDONLY)) < reused:
            plugs.append(plug)
        os.close(plug)
        epoll.doPoll(0)  # type: ignore[attr-defined]
    finally:
        for plug in plugs:
            os.close(plug)
        gc.enable()
        epoll._poller = epoll._poller.real  # type: ignore[attr-defined]
        epoll.removeReader(handler)
        a.close()
        b.close()


def test_a_hangup_for_a_closed_socket_does_not_fail_a_dial_that_took_its_number(
    epoll: EPollReactor, stalled: tuple[Any, ...]
) -> None:
    """
    A dial cancelled by an earlier handler of a batch (its client left) had
    its error still to come in that batch; a dial made by that handler got
    the same descriptor number. The error is not the new dial's: it must go
    on waiting, not be reported refused (which would also mark a healthy
    backend down). Under lean_dispatch the loop drops the event; under the
    reactor's own loop the new dial is not watched until the next turn, so
    the event finds nobody (as with Twisted's connector).
    """
    reported: list[Any] = []
    dials = {"old": stalled_dial(epoll, stalled, reported)}
    old_fd = dials["old"].fileno()

    def cancel_and_dial_again() -> None:
        dials["old"].cancel()
        dials["new"] = stalled_dial(epoll, stalled, reported)

    try:
        replay(epoll, cancel_and_dial_again, [(old_fd, REFUSED_EVENT)], old_fd)
        new = dials["new"]
        assert new.fileno() == old_fd  # the number was reused within the batch
        assert reported == []
        assert new.socket.fileno() != -1 and not new.disconnected
        epoll.runUntilCurrent()
        assert old_fd in epoll._writes  # type: ignore[attr-defined]
    finally:
        for dialled in dials.values():
            dialled.cancel()


def test_a_hangup_for_a_closed_socket_does_not_end_a_connection_that_took_its_number(
    lean_listening: tuple[EPollReactor, tcp.Port, Built, socket.socket],
    stalled: tuple[Any, ...],
) -> None:
    """
    The same for an accepted connection: a handler closes a dial and the
    accept loop, later in the batch, gets its number for a new client. The
    old socket's hang-up must not end the new client's connection.
    """
    epoll, port, factory, client = lean_listening
    old = stalled_dial(epoll, stalled, [])
    old_fd = old.fileno()

    def cancel_and_accept() -> None:
        old.cancel()
        port.doRead()

    replay(epoll, cancel_and_accept, [(old_fd, REFUSED_EVENT)], old_fd)
    [accepted] = factory.built
    assert accepted.transport.fileno() == old_fd  # type: ignore[union-attr]
    assert accepted.lost is None and accepted.transport.connected  # type: ignore[union-attr]
    client.sendall(b"still here")
    for _ in range(20):
        if accepted.data:
            break
        epoll.doPoll(0.5)  # type: ignore[attr-defined]
    assert accepted.data == b"still here"


def test_a_reactor_shutting_down_ends_a_dial_in_flight(
    epoll: EPollReactor, stalled: tuple[Any, ...]
) -> None:
    """
    At shutdown the reactor tells every descriptor it watches that its
    connection is lost: a dial still waiting ends, reported, its socket
    closed and its factory stopped, and is not watched again.
    """
    reported: list[Any] = []
    factory = OneProtocol()
    client = stalled_dial(epoll, stalled, reported, factory)
    epoll.runUntilCurrent()  # watched (from the next turn, under the stock loop)
    try:
        epoll.disconnectAll()
        assert client not in epoll._selectables.values()  # type: ignore[attr-defined]
        assert client.socket.fileno() == -1
        assert (factory.starts, factory.stops) == (1, 1)
        [(transport, reason)] = reported
        # Not a refusal: nothing refused it.
        assert transport is None and type(reason.value) is error.ConnectError
    finally:
        client.cancel()


def test_a_dial_cancelled_before_the_reactor_lets_go_of_it_ends_once(
    epoll: EPollReactor, stalled: tuple[Any, ...]
) -> None:
    """
    At shutdown a relay whose client went first cancels its dial, then the
    reactor, holding its own list, tells the dial its connection is lost:
    nothing more happens, and nothing is raised.
    """
    reported: list[Any] = []
    factory = OneProtocol()
    client = stalled_dial(epoll, stalled, reported, factory)
    epoll.runUntilCurrent()
    client.cancel()
    client.connectionLost(Failure(error.ConnectionLost()))
    assert reported == [] and (factory.starts, factory.stops) == (1, 1)


def test_a_dial_ended_before_its_first_turn_leaves_nothing_behind(
    listener: socket.socket,
) -> None:
    """
    Under a reactor's own loop a dial is watched from the next turn; one
    cancelled, or timed out on another clock, before then leaves no call,
    no registration and no open socket.
    """
    reactor = Reactor()
    cancelled = LeanClient.dial(
        reactor, listener.getsockname(), OneProtocol(), lambda t, f: None
    )
    cancelled.cancel()
    clock = task.Clock()
    reported: list[Any] = []
    timed_out = LeanClient.dial(
        reactor, listener.getsockname(), OneProtocol(),
        lambda t, f: reported.append((t, f)), timeout=1, clock=clock,
    )  # fmt: skip
    clock.advance(1)
    assert reported[0][1].check(error.TimeoutError)
    assert reactor.getDelayedCalls() == [] and clock.getDelayedCalls() == []
    reactor.advance(0)
    assert reactor.writers == set()
    assert cancelled.socket.fileno() == -1 and timed_out.socket.fileno() == -1


def test_a_read_event_for_a_closed_socket_reads_nothing_from_a_dial_that_took_its_number(
    epoll: EPollReactor, listener: socket.socket
) -> None:
    """
    A closed socket's read event, still to come in the batch, reaches a
    dial that took its number and connected at once (loopback), to a
    backend that speaks first: nothing is read before the dial is
    connected, and the greeting reaches the protocol once it is.
    """
    reported: list[Any] = []
    factory = OneProtocol()
    dials = {"old": stalled_dial(epoll, listener.getsockname(), [])}
    old_fd = dials["old"].fileno()
    accepted: list[socket.socket] = []

    def dial_and_greet() -> None:
        dials["old"].cancel()
        dials["new"] = stalled_dial(epoll, listener.getsockname(), reported, factory)
        for stale in listener.accept()[0], listener.accept()[0]:
            accepted.append(stale)
        for backend in accepted:
            backend.sendall(b"220 greeting")

    try:
        replay(epoll, dial_and_greet, [(old_fd, select.EPOLLIN)], old_fd)
        assert dials["new"].fileno() == old_fd and reported == []
        for _ in range(20):
            if factory.built.data:
                break
            epoll.runUntilCurrent()
            epoll.doPoll(0.5)  # type: ignore[attr-defined]
        assert reported == [(dials["new"], None)]
        assert factory.built.data == b"220 greeting"
    finally:
        for dialled in dials.values():
            dialled.cancel()
        for backend in accepted:
            backend.close()


def test_read_events_before_the_connect_completes_read_nothing(
    listener: socket.socket,
) -> None:
    """
    However many read events reach a dial before its connect is seen (a
    poll inside a handler can hand it two of another socket's), none reads:
    a backend's greeting waits for the protocol.
    """
    epoll = EPollReactor()
    assert lean_dispatch(epoll)
    reported: list[Any] = []
    client = stalled_dial(epoll, listener.getsockname(), reported)
    backend, _ = listener.accept()
    backend.sendall(b"220 greeting")
    try:
        assert client.doRead() is None
        assert client.doRead() is None
        assert reported == [] and not client.connected
        select.select([client.socket], [], [], 5)
        assert client.socket.recv(64, socket.MSG_PEEK) == b"220 greeting"
    finally:
        client.cancel()
        backend.close()
        epoll._poller.close()  # type: ignore[attr-defined]


def test_a_poll_inside_a_handler_does_not_let_the_outer_batchs_events_through(
    lean_listening: tuple[EPollReactor, tcp.Port, Built, socket.socket],
    stalled: tuple[Any, ...],
) -> None:
    """
    A handler that polls the reactor again (C{reactor.iterate()}) numbers a
    newer batch before the outer one's last events are handed out. Those
    are still older than what the handler made: a hang-up is dropped, and
    writability is checked with C{connect()}.
    """
    epoll, port, factory, _ = lean_listening
    reported: list[Any] = []
    dials = {
        "hung": stalled_dial(epoll, stalled, reported),
        "written": stalled_dial(epoll, stalled, reported),
    }
    numbers = sorted(d.fileno() for d in dials.values())

    def act() -> None:
        dials["hung"].cancel()
        dials["written"].cancel()
        dials["new"] = stalled_dial(epoll, stalled, reported)  # the lowest number
        epoll.doPoll(0)  # type: ignore[attr-defined]
        port.doRead()  # the other

    try:
        replay(
            epoll, act,
            [(n, REFUSED_EVENT) for n in numbers]
            + [(n, select.EPOLLOUT) for n in numbers],
            numbers[-1],
        )  # fmt: skip
        [accepted] = factory.built
        taken = [dials["new"].fileno(), accepted.transport.fileno()]  # type: ignore[union-attr]
        assert sorted(taken) == numbers
        assert reported == [] and not dials["new"].connected
        assert accepted.lost is None and accepted.transport.connected  # type: ignore[union-attr]
    finally:
        for dialled in dials.values():
            dialled.cancel()


def test_a_read_that_comes_back_full_makes_the_next_ones_larger() -> None:
    """
    Bulk transfers cross the layers in larger reads (up to MAX_READ);
    a connection whose reads are small keeps Twisted's 64 KiB.
    """
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        protocol = Recorder()
        transport = LeanServer(ours, protocol, ("a", 1), None, 1, Reactor())
        protocol.makeConnection(transport)
        theirs.sendall(b"s" * 100)
        transport.doRead()
        assert transport._read_size == 2**16  # a small read: unchanged
        sent = b"".join(bytes([i]) * 1000 for i in range(70))
        theirs.sendall(sent)
        transport.doRead()  # 64 KiB, full
        assert transport._read_size == 2**18
        transport.doRead()  # the rest
        assert transport._read_size == 2**18
        transport._read_size = MAX_READ // 2 + 1
        theirs.sendall(b"t" * (MAX_READ // 2 + 1))
        transport.doRead()
        assert transport._read_size == MAX_READ  # never past the bound
        assert protocol.data == b"s" * 100 + sent + b"t" * (MAX_READ // 2 + 1)
    finally:
        ours.close()
        theirs.close()
