"""
A TLS client that can half-close: C{ssl.SSLObject} over a plain socket, so
that close_notify and the TCP FIN are sent separately and reading goes on
after either (the blocking C{SSLSocket.unwrap()} would wait for the peer's
close_notify instead).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class HalfCloseClient:
    """One TLS connection driven by hand over a blocking socket."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_hostname="localhost")
        self._pump(self.tls.do_handshake)

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def _pump(self, op: Callable[[], T]) -> T:
        while True:
            try:
                result = op()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            else:
                self._flush()
                return result

    @property
    def version(self) -> str | None:
        return self.tls.version()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            chunk = view[:16384]
            n = self._pump(lambda c=chunk: self.tls.write(c))  # type: ignore[misc]
            view = view[n:]

    def close_notify(self) -> None:
        """Send close_notify; the peer's is not waited for."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._flush()

    def shut_write(self) -> None:
        """Send the TCP FIN."""
        self.sock.shutdown(socket.SHUT_WR)

    def read_until_end(self) -> tuple[bytes, str]:
        """
        Everything until the stream ends, and how: C{"close_notify"}, C{"eof"}
        (a FIN or reset without close_notify) or the SSL error's text.
        """
        chunks: list[bytes] = []
        while True:
            try:
                data = self._pump(lambda: self.tls.read(65536))
            except ssl.SSLZeroReturnError:
                return b"".join(chunks), "close_notify"
            except ssl.SSLEOFError:
                return b"".join(chunks), "eof"
            except ConnectionResetError:
                return b"".join(chunks), "eof"
            except ssl.SSLError as e:
                return b"".join(chunks), str(e)
            if not data:
                # SSLObject's answer to close_notify while ours is unsent
                # (a bare EOF raises SSLEOFError instead).
                return b"".join(chunks), "close_notify"
            chunks.append(data)

    def close(self) -> None:
        self.sock.close()


def round_trip(port: int, ctx: ssl.SSLContext, payload: bytes) -> bytes:
    """
    Send C{payload} and read as many bytes back, writing and reading in one
    thread: a TLS connection must not be read and written from two threads at
    once (OpenSSL's C{SSL} objects are not thread-safe, and CPython releases
    the GIL inside C{SSL_read}/C{SSL_write}).
    """
    client = HalfCloseClient(port, ctx)
    sock, tls, out = client.sock, client.tls, client._out
    sock.setblocking(False)
    got = bytearray()
    sent = 0
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(got) < len(payload):
            if not pending and sent < len(payload):
                sent += tls.write(payload[sent : sent + 16384])
                pending = out.read()
            events = sel.select(20)
            assert events, "the round trip stalled"
            for _, mask in events:
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(262144)
                    except BlockingIOError:
                        continue
                    assert data, f"closed after {len(got)} bytes"
                    client._in.write(data)
                    while True:
                        try:
                            got += tls.read(262144)
                        except ssl.SSLWantReadError:
                            break
                if mask & selectors.EVENT_WRITE and pending:
                    with contextlib.suppress(BlockingIOError):
                        pending = pending[sock.send(pending) :]
    client.close()
    return bytes(got)
