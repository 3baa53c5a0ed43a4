"""
L{DirectWriteServer} sends at once when nothing is queued, and queues the
rest, in order, through Twisted's own path when the kernel takes only part.
A socketpair stands in for the connection; the reactor is a recorder of the
descriptors registered for writing (no global reactor).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from tlsgate._directwrite import DirectWriteServer, direct_writes_on, use_direct_writes


class Reactor:
    """The part of a reactor a TCP transport's writes touch."""

    def __init__(self) -> None:
        self.writers: list[Any] = []

    def addWriter(self, w: Any) -> None:
        self.writers.append(w)

    def removeWriter(self, w: Any) -> None:
        self.writers.remove(w)

    def addReader(self, r: Any) -> None:
        pass

    def removeReader(self, r: Any) -> None:
        pass


@pytest.fixture
def pair() -> Iterator[tuple[DirectWriteServer, socket.socket, Reactor]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reactor = Reactor()
    transport = DirectWriteServer(ours, Protocol(), ("a", 1), None, 1, reactor)  # type: ignore[arg-type]
    yield transport, theirs, reactor
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
    pair: tuple[DirectWriteServer, socket.socket, Reactor],
) -> None:
    transport, theirs, reactor = pair
    transport.write(b"hello")
    assert reactor.writers == []
    assert read_all(theirs) == b"hello"


def test_what_the_kernel_does_not_take_is_queued_in_order(
    pair: tuple[DirectWriteServer, socket.socket, Reactor],
) -> None:
    transport, theirs, reactor = pair
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    transport.write(big)
    assert reactor.writers == [transport]  # the rest waits for writability
    transport.write(b"after")  # queued behind it, never sent ahead
    received = read_all(theirs)
    while reactor.writers:
        transport.doWrite()
        received += read_all(theirs)
    assert received == big + b"after"


def test_stock_ports_and_clients_are_switched_others_left_alone() -> None:
    class Port(tcp.Port):
        def __init__(self) -> None:
            pass

    port = Port()
    use_direct_writes(port)
    assert port.transport is DirectWriteServer
    other = object()
    use_direct_writes(other)
    direct_writes_on(other)
    assert type(other) is object
