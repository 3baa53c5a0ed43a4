"""
TCP transports that send at once when nothing is queued.

Twisted's C{FileDescriptor.write} always queues and registers the socket for
writability (C{epoll_ctl}), sends on the next reactor turn and unregisters
(C{epoll_ctl} again): two system calls and a loop turn per answer. The peer
benchmark's profile found about a quarter of tlsgate's keep-alive samples
there. With nothing queued, a C{send()} now is what the next turn would do,
minus the two C{epoll_ctl}s; only what the kernel does not take is queued,
through the stock path (which also reports any socket error, in C{doWrite}).

The gateway's listening ports accept with L{DirectWriteServer}
(L{use_direct_writes}); the relay's backend connections switch to
L{DirectWriteClient} when they connect.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


class _DirectWrite:
    """
    The C{write} of L{DirectWriteServer} and L{DirectWriteClient} (no
    C{__slots__}: the client's class is switched in place, which needs the
    stock class's layout).
    """

    def write(self, data: bytes) -> None:
        this: Any = self
        if (
            this._tempDataBuffer
            or this.dataBuffer
            or this.TLS  # STARTTLS on this transport: the stock path encrypts
            or this.disconnecting
            or this._writeDisconnected
            or not this.connected
            or type(data) is not bytes
        ):
            tcp.Connection.write(this, data)
            return
        try:
            sent = this.socket.send(data)
        except OSError:
            sent = 0  # full (EAGAIN), or an error doWrite reports
        if sent < len(data):
            tcp.Connection.write(this, data[sent:] if sent else data)


class DirectWriteServer(_DirectWrite, tcp.Server):
    """An accepted TCP connection that sends at once when nothing is queued."""


class DirectWriteClient(_DirectWrite, tcp.Client):
    """A dialled TCP connection that sends at once when nothing is queued."""


def use_direct_writes(port: object) -> None:
    """Have a TCP listening port accept L{DirectWriteServer}s (others: untouched)."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = DirectWriteServer


def direct_writes_on(transport: object) -> None:
    """Switch a connected stock C{tcp.Client} to L{DirectWriteClient}."""
    if type(transport) is tcp.Client:
        transport.__class__ = DirectWriteClient
