"""
L{lean_dispatch}: an epoll reactor (a private instance, never run) that
dispatches events without a logging context still reads, writes, reports
disconnections and logs what a handler raises.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsgate._dispatch import lean_dispatch
from tlsgate._tcp import LeanServer


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False
        self.reasons: list[Any] = []

    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("handler failed")
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.reasons.append(reason)


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    r = EPollReactor()
    assert lean_dispatch(r)
    yield r
    r._poller.close()  # type: ignore[attr-defined]


def connected(reactor: EPollReactor) -> tuple[Recorder, LeanServer, socket.socket]:
    ours, theirs = socket.socketpair()
    protocol = Recorder()
    transport = LeanServer(ours, protocol, ("a", 1), None, 1, reactor)
    protocol.makeConnection(transport)
    return protocol, transport, theirs


def test_reads_and_disconnections_are_dispatched(reactor: EPollReactor) -> None:
    protocol, _, theirs = connected(reactor)
    theirs.sendall(b"hello")
    reactor.doIteration(0)
    assert protocol.data == b"hello"
    theirs.close()
    reactor.doIteration(0)
    assert protocol.lost


def test_an_exception_in_a_handler_is_logged_and_drops_that_connection(
    reactor: EPollReactor,
) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        bad, _, bad_peer = connected(reactor)
        good, _, good_peer = connected(reactor)
        bad_peer.sendall(b"boom")
        good_peer.sendall(b"fine")
        reactor.doIteration(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert bad.lost and not good.lost
    assert good.data == b"fine"
    failures = [e.get("log_failure") or e.get("failure") for e in events]
    assert any(f is not None and f.check(RuntimeError) for f in failures)
    bad_peer.close()
    good_peer.close()


def test_other_reactors_are_left_alone() -> None:
    clock = Clock()
    assert not lean_dispatch(clock)
    assert "doIteration" not in vars(clock)


def test_an_error_while_a_connection_is_lost_is_logged_and_the_batch_goes_on(
    reactor: EPollReactor,
) -> None:
    class Broken(Recorder):
        def connectionLost(self, reason: Any = None) -> None:
            raise RuntimeError("bug in connectionLost")

    ours, theirs = socket.socketpair()
    broken = Broken()
    transport = LeanServer(ours, broken, ("a", 1), None, 1, reactor)
    broken.makeConnection(transport)
    good, _, good_peer = connected(reactor)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        theirs.close()  # the broken one is lost; its connectionLost raises
        good_peer.sendall(b"still served")
        reactor.doIteration(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert good.data == b"still served"
    failures = [e.get("log_failure") or e.get("failure") for e in events]
    assert any(f is not None and f.check(RuntimeError) for f in failures)
    good_peer.close()


def test_writability_flushes_what_was_queued(reactor: EPollReactor) -> None:
    _, transport, theirs = connected(reactor)
    theirs.setblocking(False)
    big = b"w" * (4 << 20)  # more than the socket takes at once: the rest queued
    transport.write(big)
    received = b""
    for _ in range(10_000):
        if len(received) == len(big):
            break
        try:
            received += theirs.recv(1 << 20)
        except BlockingIOError:
            reactor.doIteration(0)  # a write event: doWrite sends more
    assert received == big
    theirs.close()


def test_a_hang_up_on_a_socket_not_being_read_is_a_lost_connection(
    reactor: EPollReactor,
) -> None:
    from twisted.internet.error import ConnectionDone, ConnectionLost

    protocol, transport, theirs = connected(reactor)
    transport.stopReading()
    transport.startWriting()  # registered for writing only
    theirs.close()
    reactor.doIteration(0)
    [reason] = protocol.reasons
    assert reason.check(ConnectionLost) and not reason.check(ConnectionDone)


def test_a_descriptor_gone_from_under_its_transport_is_disconnected(
    reactor: EPollReactor,
) -> None:
    from twisted.internet.error import ConnectionFdescWentAway

    protocol, transport, theirs = connected(reactor)
    theirs.sendall(b"x")
    ours = transport.socket
    transport.fileno = lambda: -1  # type: ignore[method-assign]
    reactor.doIteration(0)
    [reason] = protocol.reasons
    assert reason.check(ConnectionFdescWentAway)
    ours.close()
    theirs.close()


def test_a_closed_transport_leaves_the_reactor_and_the_epoll_set(
    reactor: EPollReactor,
) -> None:
    """
    A lean transport's close drops its registration in one step, reading
    and writing alike.
    """
    protocol, transport, theirs = connected(reactor)
    transport.startWriting()
    fd = transport.fileno()
    r: Any = reactor
    assert r._selectables[fd] is transport and fd in r._reads and fd in r._writes
    theirs.close()
    reactor.doIteration(0)
    assert protocol.lost
    assert fd not in r._selectables
    assert fd not in r._reads and fd not in r._writes


def test_a_transport_lost_while_unregistered_touches_nothing(
    reactor: EPollReactor,
) -> None:
    """Paused both ways when it is lost: nothing to unregister, nothing fails."""
    protocol, transport, theirs = connected(reactor)
    transport.stopReading()
    r: Any = reactor
    other, other_transport, other_peer = connected(reactor)  # stays registered
    transport.connectionLost(Failure(ConnectionDone()))
    assert protocol.lost
    other_peer.sendall(b"still here")
    reactor.doIteration(0)
    assert other.data == b"still here"
    assert transport not in r._selectables.values()
    assert other_transport in r._selectables.values()
    theirs.close()


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.read_closed = 0

    def readConnectionLost(self) -> None:
        self.read_closed += 1

    def writeConnectionLost(self) -> None:
        pass


@pytest.mark.parametrize("writing", [False, True])
def test_a_peers_fin_half_closes_and_stops_only_the_reading(
    reactor: EPollReactor, writing: bool
) -> None:
    """
    The peer's FIN on a half-closeable lean transport: the protocol's
    readConnectionLost, once; the descriptor leaves the readers (and the
    epoll set, unless it is still writing); the other direction still works.
    """
    ours, theirs = socket.socketpair()
    protocol = HalfCloser()
    transport = LeanServer(ours, protocol, ("a", 1), None, 1, reactor)
    protocol.makeConnection(transport)
    fd = transport.fileno()
    r: Any = reactor
    if writing:
        transport.startWriting()
    stock: list[object] = []
    r._disconnectSelectable = lambda *a: stock.append(a)  # must not be needed
    theirs.shutdown(socket.SHUT_WR)
    reactor.doIteration(0)
    assert stock == []  # handled in the loop
    del r._disconnectSelectable
    assert protocol.read_closed == 1 and not protocol.lost
    assert fd not in r._reads
    assert (fd in r._selectables) is writing and (fd in r._writes) is writing
    reactor.doIteration(0)  # no second FIN event
    assert protocol.read_closed == 1
    transport.write(b"answer")
    assert theirs.recv(100) == b"answer"
    transport.loseConnection()
    reactor.doIteration(0)
    reactor.runUntilCurrent()  # the close due at the start of the next turn
    assert protocol.lost and fd not in r._selectables
    theirs.close()


def test_applied_again_or_over_a_partial_state_it_polls_and_keeps_counting() -> None:
    """
    lean_dispatch may meet a reactor it was applied to already, or one that
    has its batch count but not the batch being handed out: each counter it
    lacks is added, none is reset, and polling works.
    """
    r = EPollReactor()
    r._tlsgate_polls = 5  # type: ignore[attr-defined]
    try:
        assert lean_dispatch(r)
        assert lean_dispatch(r)
        r.doPoll(0)  # type: ignore[attr-defined]
        assert r._tlsgate_polls == 6  # type: ignore[attr-defined]
        assert r._tlsgate_dispatching == 0  # type: ignore[attr-defined]
    finally:
        r._poller.close()  # type: ignore[attr-defined]
