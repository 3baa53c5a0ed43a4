"""
Hostile and broken clients on the gateway's own data path (lean transports,
the half-closing TLS layer, the direct backend dial), against a real
gateway process: a ClientHello written a byte at a time completes; a
handshake abandoned at any step costs no backend connection and counts as a
failed handshake; garbage records after the handshake end that connection
only; bytes a TLS 1.2 client sends after its close_notify are never relayed.
After each, the next client is served.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import ssl
import threading
from pathlib import Path

from tests.integration._halfclose import HalfCloseClient
from tests.integration.conftest import free_port, site_with_backend
from tests.integration.test_admin import metric
from tests.integration.test_resumption_after_abrupt_close import settled_metrics


class CountingEcho(socketserver.BaseRequestHandler):
    """Echoes to end of input, then closes; counts connections and bytes."""

    lock = threading.Lock()
    connections = 0
    received = b""

    def handle(self) -> None:
        with CountingEcho.lock:
            CountingEcho.connections += 1
        while data := self.request.recv(65536):
            with CountingEcho.lock:
                CountingEcho.received += data
            self.request.sendall(data)

    @classmethod
    def reset(cls) -> None:
        with cls.lock:
            cls.connections = 0
            cls.received = b""


def tls_object(
    ctx: ssl.SSLContext,
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return (
        ctx.wrap_bio(incoming, outgoing, server_hostname="localhost"),
        incoming,
        outgoing,
    )


def client_hello(
    ctx: ssl.SSLContext,
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    tls, incoming, outgoing = tls_object(ctx)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return tls, incoming, outgoing, outgoing.read()


def read_some(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def test_a_client_hello_sent_a_byte_at_a_time_completes(tmp_path: Path) -> None:
    CountingEcho.reset()
    with site_with_backend(tmp_path, CountingEcho) as site:
        site.start()
        tls, incoming, outgoing, hello = client_hello(site.client_context())
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(hello)):
                raw.send(hello[i : i + 1])
            while True:
                data = read_some(raw)
                assert data, "the gateway closed during the handshake"
                incoming.write(data)
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    continue
            tls.write(b"ping")
            raw.sendall(outgoing.read())  # the client's Finished, then the data
            echoed = b""
            while len(echoed) < 4:
                data = read_some(raw)
                assert data, "no echo"
                incoming.write(data)
                try:
                    echoed += tls.read(4)
                except ssl.SSLWantReadError:
                    continue
        assert echoed == b"ping"
        assert CountingEcho.received == b"ping"


def test_handshakes_abandoned_at_each_step_reach_no_backend(tmp_path: Path) -> None:
    CountingEcho.reset()
    admin = free_port()
    with site_with_backend(tmp_path, CountingEcho) as site:
        site.start(admin=f"tcp:{admin}:interface=127.0.0.1")
        failed = "tlsgate_handshakes_total"
        labels = {"listener": "web", "result": "failed", "resumed": "no"}
        before = metric(settled_metrics(admin), failed, **labels)
        ctx = site.client_context()
        steps = 0
        # Connect and leave; half a ClientHello; a whole one, leaving before
        # the server's flight is read; after reading it; garbage for Finished.
        for step in ("nothing", "half hello", "hello", "flight read", "bad finished"):
            _, _, _, hello = client_hello(ctx)
            with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
                if step == "half hello":
                    raw.sendall(hello[: len(hello) // 2])
                elif step != "nothing":
                    raw.sendall(hello)
                if step in ("flight read", "bad finished"):
                    assert read_some(raw)  # ServerHello ... Finished
                if step == "bad finished":
                    raw.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))
                    while read_some(raw):
                        pass
            steps += 1
        metrics = settled_metrics(admin)
        # The bare connect is a client that left, not a failed handshake.
        assert metric(metrics, failed, **labels) >= before + steps - 1
        assert CountingEcho.connections == 0
        assert site.served() == site.first.fingerprint
        assert CountingEcho.connections == 1


def test_garbage_records_after_the_handshake_end_that_connection_only(
    tmp_path: Path,
) -> None:
    CountingEcho.reset()
    with site_with_backend(tmp_path, CountingEcho) as site:
        site.start()
        client = HalfCloseClient(site.port, site.client_context())
        try:
            client.send(b"hello")
            client.sock.sendall(b"\x17\x03\x03\x01\x00" + os.urandom(256))
            answer, end = client.read_until_end()
        finally:
            client.close()
        assert answer in (b"", b"hello")  # the echo, if it came before
        assert end != "close_notify"  # an alert or a close, never a clean end
        assert CountingEcho.received in (b"", b"hello")
        assert site.served() == site.first.fingerprint


def test_bytes_after_a_tls12_close_notify_are_not_relayed(tmp_path: Path) -> None:
    CountingEcho.reset()
    with site_with_backend(tmp_path, CountingEcho) as site:
        site.start()
        ctx = site.client_context()
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        client = HalfCloseClient(site.port, ctx)
        try:
            client.send(b"request")
            client.close_notify()
            client.sock.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(64))
            answer, end = client.read_until_end()
        finally:
            client.close()
        assert answer == b"request"
        assert end == "close_notify"
        assert CountingEcho.received == b"request"
        assert site.served() == site.first.fingerprint
