"""
The floor: the least a Python TLS relay over pyOpenSSL's memory BIOs can do
per connection, for bench/peers.py (its C{floor} row, only when named in
C{--only}).

One process, one C{select.epoll}, one C{__slots__} object per connection
holding the accepted socket, the C{SSL.Connection} over two memory BIOs and
the backend socket; the same context as tlsgate's (C{build_server_context},
no session resumption). It has none of tlsgate's features: no Twisted, no
certificate check per connection, no limits, timeouts or counts, no
half-close (the first end of either side closes both, after a close_notify
to the client), no PROXY header, no failover. What tlsgate spends above this
row is its features and its layers; what this row spends above hitch is
Python and pyOpenSSL.

C{--socket-bio} runs the same floor with OpenSSL reading and writing the
client's socket itself (handshake figures only), to tell what the memory
BIOs cost from what the layers above them cost; started by hand, as in
docs/benchmarks.md.

Not a test and not run in CI.

    python bench/floor_relay.py --cert cert.pem --key key.pem \\
        --port 8443 --backend 127.0.0.1:8080 [--socket-bio]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from OpenSSL import SSL

from tlsgate.certs import TLSPolicy, parse_certified_key
from tlsgate.certs._policy import build_server_context

IN, OUT = select.EPOLLIN, select.EPOLLOUT
WantRead = SSL.WantReadError


def read(sock: socket.socket) -> bytes | None:
    """What the socket has: C{None} for nothing yet, C{b""} for its end."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Conn:
    """One relayed connection: client socket, TLS, backend socket, and what waits."""

    __slots__ = ("back", "back_out", "client", "client_out", "done", "tls")

    def __init__(self, client: socket.socket, ctx: SSL.Context) -> None:
        self.client = client
        self.tls = SSL.Connection(ctx, None)
        self.tls.set_accept_state()
        self.back: socket.socket | None = None
        self.client_out = b""  # encrypted, for the client
        self.back_out = b""  # plain, for the backend
        self.done = False


class Relay:
    def __init__(self, ctx: SSL.Context, port: int, backend: tuple[str, int]) -> None:
        self.ctx = ctx
        self.backend = backend
        self.ep = select.epoll()
        self.fds: dict[int, tuple[Conn, bool]] = {}
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.ep.register(self.listener.fileno(), IN)

    def run(self) -> None:
        poll, dispatch = self.ep.poll, self.dispatch
        while True:
            for fd, ev in poll():
                dispatch(fd, ev)

    def dispatch(self, fd: int, ev: int) -> None:
        """One event: a connection to accept, a socket to flush or to read."""
        if fd == self.listener.fileno():
            self.accept()
            return
        entry = self.fds.get(fd)
        if entry is None:
            return
        c, is_back = entry
        if ev & OUT:
            self.flush(c, is_back)
        if ev & (IN | select.EPOLLHUP | select.EPOLLERR) and not c.done:
            if is_back:
                self.backend_readable(c)
            else:
                self.client_readable(c)

    def accept(self) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except BlockingIOError:
                return
            s.setblocking(False)
            c = self.connection(s)
            self.fds[s.fileno()] = (c, False)
            self.ep.register(s.fileno(), IN)

    def connection(self, s: socket.socket) -> Conn:
        return Conn(s, self.ctx)

    def client_readable(self, c: Conn) -> None:
        data = read(c.client)
        if data is None:
            return
        if not data:
            self.close(c)
            return
        c.tls.bio_write(data)
        if c.back is None and not self.handshake(c):
            self.send_tls(c)
            return
        self.relay_in(c)
        self.send_tls(c)

    def handshake(self, c: Conn) -> bool:
        """Go on with the handshake; once done, dial the backend. Whether both are."""
        try:
            c.tls.do_handshake()
        except (SSL.WantReadError, SSL.WantWriteError):
            return False
        except SSL.Error:
            self.close(c)
            return False
        b = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if b.connect_ex(self.backend) not in (0, errno.EINPROGRESS):
            b.close()
            self.close(c)
            return False
        c.back = b
        self.fds[b.fileno()] = (c, True)
        self.ep.register(b.fileno(), IN | OUT)  # OUT: connected
        return True

    def relay_in(self, c: Conn) -> None:
        """What the client sent, decrypted, to the backend."""
        while not c.done:
            try:
                c.back_out += c.tls.recv(65536)
            except (SSL.WantReadError, SSL.WantWriteError):
                break
            except SSL.Error:
                self.close(c)
                return
        self.flush(c, True)

    def backend_readable(self, c: Conn) -> None:
        assert c.back is not None
        data = read(c.back)
        if data is None:
            return
        if not data:
            self.close(c)
            return
        self.to_client(c, data)

    def to_client(self, c: Conn, data: bytes) -> None:
        c.tls.sendall(data)
        self.send_tls(c)

    def send_tls(self, c: Conn) -> None:
        with contextlib.suppress(WantRead):
            c.client_out += c.tls.bio_read(1 << 20)
        self.flush(c, False)

    def flush(self, c: Conn, to_back: bool) -> None:
        sock = c.back if to_back else c.client
        pending = c.back_out if to_back else c.client_out
        if sock is None or c.done:
            return
        if pending:
            try:
                sent = sock.send(pending)
            except (BlockingIOError, OSError):
                sent = 0
            pending = pending[sent:]
            if to_back:
                c.back_out = pending
            else:
                c.client_out = pending
        self.ep.modify(sock.fileno(), IN | OUT if pending else IN)

    def close(self, c: Conn) -> None:
        if c.done:
            return
        try:
            c.tls.shutdown()  # close_notify
            c.client.send(c.client_out + c.tls.bio_read(65536))
        except (SSL.Error, OSError):
            pass
        self.forget(c)

    def forget(self, c: Conn) -> None:
        c.done = True
        for s in (c.client, c.back):
            if s is not None:
                self.fds.pop(s.fileno(), None)
                self.ep.unregister(s.fileno())
                s.close()


class SocketBioRelay(Relay):
    """
    The same floor with OpenSSL reading and writing the client's socket
    itself (a socket BIO): no memory BIOs, no copies through Python. For
    telling what the memory BIOs cost from what the layers above them cost.
    """

    def connection(self, s: socket.socket) -> Conn:
        c = Conn(s, self.ctx)
        c.tls = SSL.Connection(self.ctx, s)
        c.tls.set_accept_state()
        return c

    def client_readable(self, c: Conn) -> None:
        if c.back is None and not self.handshake(c):
            return  # OpenSSL wrote what the handshake needed itself
        self.relay_in(c)

    def to_client(self, c: Conn, data: bytes) -> None:
        c.tls.sendall(data)  # small answers: the socket takes them at once

    def close(self, c: Conn) -> None:
        if c.done:
            return
        with contextlib.suppress(SSL.Error):
            c.tls.shutdown()  # close_notify, written by OpenSSL
        self.forget(c)


class _Descriptor:
    """One socket of the Twisted floor, as the reactor sees it."""

    __slots__ = ("fd", "handler")

    def __init__(self, fd: int, handler: Callable[[int], None]) -> None:
        self.fd = fd
        self.handler = handler

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.handler(IN)

    def doWrite(self) -> None:
        self.handler(OUT)

    def connectionLost(self, reason: object) -> None:
        pass

    def logPrefix(self) -> str:
        return "floor"


class _ReactorPoller:
    """C{select.epoll}'s register/modify/unregister, done through a reactor."""

    def __init__(self, reactor: Any, relay: Relay) -> None:
        self.reactor = reactor
        self.relay = relay
        self.descriptors: dict[int, _Descriptor] = {}

    def register(self, fd: int, events: int) -> None:
        def handle(event: int) -> None:
            self.relay.dispatch(fd, event)

        self.descriptors[fd] = _Descriptor(fd, handle)
        self.modify(fd, events)

    def modify(self, fd: int, events: int) -> None:
        d = self.descriptors[fd]
        if events & IN:
            self.reactor.addReader(d)
        else:
            self.reactor.removeReader(d)
        if events & OUT:
            self.reactor.addWriter(d)
        else:
            self.reactor.removeWriter(d)

    def unregister(self, fd: int) -> None:
        d = self.descriptors.pop(fd)
        self.reactor.removeReader(d)
        self.reactor.removeWriter(d)


class TwistedRelay(Relay):
    """
    The same floor on Twisted's epoll reactor (with tlsgate's direct event
    dispatch, as the gateway runs): each socket a bare descriptor, no
    transports or protocols, whose events go to L{Relay.dispatch}. What it
    spends above L{Relay} is the reactor.
    """

    def run(self) -> None:
        from twisted.internet import epollreactor

        epollreactor.install()
        from twisted.internet import reactor

        from tlsgate._dispatch import lean_dispatch

        lean_dispatch(reactor)
        self.ep.close()
        self.ep = _ReactorPoller(reactor, self)  # type: ignore[assignment]
        self.ep.register(self.listener.fileno(), IN)
        reactor.run()  # type: ignore[attr-defined]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", required=True, help="IP:PORT")
    p.add_argument("--socket-bio", action="store_true",
                   help="OpenSSL reads and writes the client socket (handshake"
                   " figures only: large answers are not flow-controlled)")  # fmt: skip
    p.add_argument("--twisted", action="store_true",
                   help="run the same floor on Twisted's epoll reactor")  # fmt: skip
    a = p.parse_args()
    material = parse_certified_key(
        Path(a.cert).read_bytes(), Path(a.key).read_bytes(),
        cert_path=a.cert, key_path=a.key,
    )  # fmt: skip
    ctx = build_server_context(material, TLSPolicy(session_resumption=False))
    host, _, port = a.backend.rpartition(":")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    relay = SocketBioRelay if a.socket_bio else TwistedRelay if a.twisted else Relay
    relay(ctx, a.port, (host, int(port))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
