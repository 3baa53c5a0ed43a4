"""
The abort after C{close_grace}: strict for a close the gateway decided, and
measured by the client's progress after the application's own close, over a
real socket pair so that the kernel's send queue is real (L{unsent_bytes}).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.unit.test_tracker import Transport, connect, run, tracker_for
from tlsgate.tracker import CloseReason, ConnectionTracker, Limits
from tlsgate.tracker._unsent import unsent_bytes

GRACE = 5


class SocketTransport(Transport):
    """
    A test transport over one end of a socket pair, with the buffer
    attributes of Twisted's TCP transports: what was sent sits in the
    kernel's queue until the other end reads it.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._lenient = True  # the tracker pauses and resumes while closing
        self.socket = sock
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def queued_connection(
    tracker: ConnectionTracker,
    pair: tuple[socket.socket, socket.socket],
    chunks: int = 16,
) -> tuple[Any, SocketTransport]:
    """
    A connection whose socket holds C{chunks} 4 KiB writes the client has not
    read, 64 KiB by default (a UNIX socket's queue shrinks by whole writes, as
    they are read).
    """
    protocol, _ = connect(tracker)
    transport = SocketTransport(pair[0])
    protocol.transport = transport
    for _ in range(chunks):
        pair[0].sendall(b"x" * 4096)
    return protocol, transport


def queued(
    pair: tuple[socket.socket, socket.socket], chunks: int = 16, **limits: Any
) -> tuple[Clock, ConnectionTracker, Any, SocketTransport]:
    """A clock, a tracker with C{limits} and a L{queued_connection} of it."""
    clock = Clock()
    tracker = tracker_for(clock, **limits)
    return (clock, tracker, *queued_connection(tracker, pair, chunks))


def read_some(theirs: socket.socket) -> int:
    return len(theirs.recv(4096))


def aborted_after(clock: Clock, transport: Any, seconds: float) -> None:
    """The connection is aborted C{seconds} from now, not half a second before."""
    run(clock, seconds - 0.5)
    assert not transport.aborted
    run(clock, 0.5)
    assert transport.aborted


def take_slowly(
    clock: Clock, theirs: socket.socket, until: int, transport: Any, taken: int = 0
) -> int:
    """
    The client takes 4 KiB every 4 s, far slower than close_grace allows,
    until it has C{until} bytes; the connection is not aborted meanwhile.
    """
    while taken < until:
        run(clock, 4)
        assert not transport.aborted
        taken += read_some(theirs)
    return taken


def test_unsent_bytes_counts_the_kernels_queue_and_the_buffer(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    transport = SocketTransport(pair[0])
    assert unsent_bytes(transport) == 0
    pair[0].sendall(b"x" * 4096)
    pair[0].sendall(b"x" * 4096)
    in_kernel = unsent_bytes(transport)
    assert in_kernel is not None and in_kernel >= 8192
    transport.dataBuffer, transport._tempDataLen = b"y" * 300, 200
    assert unsent_bytes(transport) == in_kernel + 500
    transport.offset = 100
    assert unsent_bytes(transport) == in_kernel + 400
    transport.dataBuffer, transport.offset, transport._tempDataLen = b"", 0, 0
    pair[1].recv(4096)
    after_one = unsent_bytes(transport)
    assert after_one is not None and 0 < after_one < in_kernel
    pair[1].recv(4096)
    assert unsent_bytes(transport) == 0
    assert unsent_bytes(Transport()) is None  # no socket: cannot tell
    pair[0].close()
    assert unsent_bytes(transport) is None


def test_a_client_reading_slowly_after_the_application_closed_is_not_cut_off(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    clock, _tracker, protocol, transport = queued(pair, close_grace=GRACE)
    protocol.loseConnection()  # the backend went: the relay closes
    take_slowly(clock, pair[1], 65536, transport)
    # All taken; a client that then never answers close_notify is aborted
    # within two graces of its last read.
    run(clock, 2 * GRACE)
    assert transport.aborted


def test_a_client_taking_nothing_after_the_application_closed_is_aborted(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """
    Nothing is measured at the close (most clients answer first): the first
    look finds some of the answer unsent and gives the client another
    close_grace, in which it takes nothing.
    """
    clock, _tracker, protocol, transport = queued(pair, close_grace=GRACE)
    protocol.loseConnection()
    aborted_after(clock, transport, 2 * GRACE)


def test_a_client_with_everything_that_never_answers_is_aborted_after_close_grace(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    clock, _, protocol, transport = queued(pair, chunks=0, close_grace=GRACE)
    protocol.loseConnection()  # all it was sent, it has taken
    aborted_after(clock, transport, GRACE)


def test_a_close_the_gateway_decided_is_aborted_after_close_grace_however_it_reads(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The drain's bound on a stop holds with a client still reading."""
    clock, _tracker, protocol, transport = queued(pair, close_grace=GRACE)
    protocol.close_gracefully(CloseReason.DRAIN, quiet=True)
    for _ in range(GRACE):
        assert not transport.aborted
        read_some(pair[1])
        run(clock, 1)
    assert transport.aborted


def test_a_drain_bounds_a_connection_the_application_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """
    The application closed first and its client still reads; a drain then
    ends it within close_grace, and the close stays the application's.
    """
    clock, tracker, protocol, transport = queued(pair, close_grace=GRACE)
    protocol.wrapped.close_reason = CloseReason.BACKEND
    protocol.loseConnection()
    run(clock, 3)
    tracker.drain(1)
    for _ in range(2 * GRACE):
        if transport.aborted:
            break
        read_some(pair[1])
        run(clock, 1)
    assert transport.aborted
    assert clock.seconds() <= 3 + 1 + GRACE + 1
    protocol.connectionLost(Exception())  # type: ignore[arg-type]
    assert tracker.closed == {CloseReason.BACKEND: 1}


def test_idle_timeout_does_not_end_a_client_still_taking_the_answer(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """
    Nothing is written for longer than idle_timeout, after the application's
    close or before it, while the client takes the answer slowly: it is not
    idle, and gets all of it.
    """
    clock, _tracker, protocol, transport = queued(
        pair, idle_timeout=20, close_grace=GRACE
    )
    taken = take_slowly(clock, pair[1], 32768, transport)  # before the close
    assert not protocol.closing and not transport.disconnecting
    protocol.loseConnection()  # the backend went
    take_slowly(clock, pair[1], 65536, transport, taken)
    run(clock, 2 * GRACE)
    assert transport.aborted


def test_idle_timeout_ends_a_client_that_takes_nothing_one_grace_late(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    clock, _tracker, protocol, _ = queued(pair, idle_timeout=20, close_grace=GRACE)
    run(clock, 20 + 1 + GRACE - 0.5)  # the deadline, one wheel tick, a look
    assert not protocol.closing
    run(clock, 1.5)
    assert protocol.closing and protocol.reason is CloseReason.IDLE_TIMEOUT


def test_max_lifetime_bounds_a_client_still_taking_after_the_application_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """However slowly the client takes the rest, max_lifetime still ends it."""
    clock, _tracker, protocol, transport = queued(
        pair, max_lifetime=30, lifetime_jitter=0, close_grace=GRACE
    )
    protocol.loseConnection()
    taken = 0
    while not transport.aborted:
        assert clock.seconds() <= 30 + 1 + GRACE + 1
        run(clock, 4)
        taken += read_some(pair[1])
    assert taken < 65536  # it was still taking


def test_a_look_taken_before_new_traffic_is_not_the_next_ones_baseline(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """
    The first idle look finds the client taking; then more is written (the
    idle deadline moves), and the client takes it steadily: at the next
    deadline its queue is longer than at that old look, yet it is taking.
    """
    clock, _tracker, protocol, _ = queued(pair, idle_timeout=20, close_grace=GRACE)
    run(clock, 21.5)  # the deadline's first look: taking, looked at again later
    protocol.write(b"")  # the application writes (through the wrapper)...
    for _ in range(12):
        pair[0].sendall(b"y" * 4096)  # ...48 KiB more
    for _ in range(12):
        run(clock, 4)
        read_some(pair[1])
        assert not protocol.closing


def test_the_idle_look_does_not_delay_max_lifetime(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    clock, tracker, protocol, _ = queued(
        pair, idle_timeout=20, max_lifetime=24, lifetime_jitter=0, close_grace=10
    )
    while not protocol.closing:
        run(clock, 2)
        read_some(pair[1])
    assert protocol.reason is CloseReason.LIFETIME
    assert clock.seconds() <= 24 + tracker.resolution + 2


def test_max_lifetime_still_bounds_it_when_idle_timeout_is_set(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """After the application's close the wheel keeps it for its lifetime."""
    clock, _tracker, protocol, transport = queued(
        pair, idle_timeout=10, max_lifetime=30, lifetime_jitter=0, close_grace=GRACE
    )
    protocol.loseConnection()
    while not transport.aborted:
        assert clock.seconds() <= 30 + 1 + GRACE + 1
        run(clock, 4)
        read_some(pair[1])


def test_a_reload_does_not_shorten_a_look(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    clock, tracker, protocol, _ = queued(pair, idle_timeout=20, close_grace=GRACE)
    run(clock, 21.5)  # the first look: taking, looked at again later
    tracker.set_limits(Limits(handshake_timeout=10, idle_timeout=20, close_grace=GRACE))
    run(clock, 3)
    read_some(pair[1])  # 3 s into a 5 s look
    run(clock, 3)
    assert not protocol.closing


def test_close_grace_reloaded_to_zero_leaves_a_closing_client_unbounded(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    clock, tracker, protocol, transport = queued(pair, close_grace=GRACE)
    protocol.loseConnection()
    tracker.set_limits(Limits(handshake_timeout=10, idle_timeout=0, close_grace=0))
    run(clock, 60)
    assert not transport.aborted


def test_a_client_that_took_its_last_bytes_at_a_look_gets_a_whole_look(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    clock, _, protocol, transport = queued(pair, chunks=2, close_grace=GRACE)
    protocol.loseConnection()
    run(clock, 1)
    read_some(pair[1])
    run(clock, 5)
    read_some(pair[1])  # the last bytes, at t=6
    run(clock, 4.5)  # the look at 10 saw it take them
    assert not transport.aborted
    run(clock, 5)
    assert transport.aborted
