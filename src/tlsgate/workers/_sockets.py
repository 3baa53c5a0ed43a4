"""
The listening sockets a supervisor binds and hands to its workers: one
shared socket per listener (what runs), or one C{SO_REUSEPORT} socket per
worker (kept as a measured alternative).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tlsgate.errors import ListenError
from tlsgate.service import server_endpoint


@dataclass
class BoundSocket:
    """
    A listening socket bound by the supervisor (which never accepts on it).

    With C{SO_REUSEPORT} (L{bind_reuseport}), each worker slot gets its own
    socket bound to the same address instead, made on demand.
    """

    port: IListeningPort | None
    fd: int
    family: int
    _slots: list[socket.socket] = field(default_factory=list)
    backlog: int = 50

    def fd_for(self, slot: int) -> int:
        """The descriptor worker C{slot} accepts on."""
        if not self._slots:
            return self.fd
        first = self._slots[0]
        while len(self._slots) <= slot:
            address = first.getsockname()[:2]
            self._slots.append(_reuseport_socket(self.family, address, self.backlog))
        return self._slots[slot].fileno()

    def close(self) -> None:
        if self.port is not None:
            self.port.stopListening()
        for s in self._slots:
            s.close()


def bind(reactor: IReactorCore, description: str, where: str) -> BoundSocket:
    """
    Bind C{description} (any stream server endpoint: tcp, tcp6, unix,
    systemd) and stop reading from it: workers accept, the supervisor only
    holds it. Every worker accepts from this one socket.

    @param where: how errors name the key (file, section and key).
    @raise ListenError: naming the endpoint, when it cannot be bound.
    """
    failures: list[Failure] = []
    ports: list[IListeningPort] = []
    try:
        endpoint = server_endpoint(reactor, description, where)
        endpoint.listen(Factory.forProtocol(Protocol)).addCallbacks(
            ports.append, failures.append
        )
    except (ValueError, OSError) as e:
        raise ListenError(f"{where} = {description}: cannot listen: {e}") from None
    if failures or not ports:
        why = failures[0].getErrorMessage() if failures else "no port"
        raise ListenError(f"{where} = {description}: cannot listen: {why}")
    port = ports[0]
    port.stopReading()  # type: ignore[attr-defined]
    return BoundSocket(port, port.fileno(), int(port.addressFamily))  # type: ignore[attr-defined]


def _reuseport_socket(
    family: int, address: tuple[str, int], backlog: int = 1024
) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind(address)
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


def bind_reuseport(reactor: IReactorCore, description: str, where: str) -> BoundSocket:
    """
    L{bind}, but a C{tcp:}/C{tcp6:} listener gets one C{SO_REUSEPORT} socket
    per worker, so the kernel hashes connections over them. Kept as the
    other side of the measurement in C{bench/workers.py} (set
    C{TLSGATE_REUSEPORT=1}); the shared socket is what runs, because it
    spread as evenly and a dead worker's C{SO_REUSEPORT} socket would hold
    the connections hashed to it until the worker is replaced.
    """
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return bind(reactor, description, where)
    family = (
        socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    )
    try:
        first = _reuseport_socket(
            family, (endpoint._interface or "", endpoint._port), endpoint._backlog
        )
    except OSError as e:
        raise ListenError(
            f"{where} = {description}: cannot listen: {e.strerror}"
        ) from None
    return BoundSocket(None, first.fileno(), family, [first], endpoint._backlog)


#: Binds (reactor, listen description, how errors name the key).
Binder = Callable[[IReactorCore, str, str], BoundSocket]
