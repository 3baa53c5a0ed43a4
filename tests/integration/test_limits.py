"""
Connection limits against a real gateway process: handshake and idle
timeouts, a busy client closed at its lifetime with every answer intact, the
per-client cap, and SIGTERM draining a transfer in flight.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import socketserver
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Site, recv_exactly, site_with_backend

ANSWER_PAD = 2000


class LineHandler(socketserver.StreamRequestHandler):
    """REQ n -> one answer line; STREAM n -> n bytes, slowly, then close."""

    def handle(self) -> None:
        for line in self.rfile:
            word, _, arg = line.decode().strip().partition(" ")
            if word == "REQ":
                self.wfile.write(f"RESP {arg} {'x' * ANSWER_PAD}\n".encode())
                self.wfile.flush()
            elif word == "STREAM":
                left = int(arg)
                while left:
                    chunk = min(left, 65536)
                    self.wfile.write(b"s" * chunk)
                    self.wfile.flush()
                    left -= chunk
                    time.sleep(0.02)
                return


@pytest.fixture
def line_site(tmp_path: Path) -> Iterator[Site]:
    with site_with_backend(tmp_path, LineHandler) as site:
        yield site


def tls_connect(site: Site) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", site.port), timeout=10)
    return site.client_context().wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False
    )


def test_silent_tcp_client_is_dropped_at_the_handshake_timeout(line_site: Site) -> None:
    line_site.start(handshake_timeout="1s")
    with socket.create_connection(("127.0.0.1", line_site.port), timeout=10) as raw:
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert raw.recv(1) == b""
        waited = time.monotonic() - started
    assert 0.8 < waited < 4, waited


def test_idle_tls_client_gets_close_notify_at_the_idle_timeout(line_site: Site) -> None:
    """After idle_timeout of silence the client sees a clean TLS close (close_notify)."""
    line_site.start(idle_timeout="1s")
    with tls_connect(line_site) as tls:
        started = time.monotonic()
        assert tls.recv(1) == b""  # suppress_ragged_eofs=False: a bare FIN would raise
        waited = time.monotonic() - started
    assert 0.9 < waited < 3, waited


def test_busy_client_is_closed_at_its_lifetime_with_every_answer_whole(
    line_site: Site,
) -> None:
    """
    A health check every 100 ms on a connection with a 1.5 s lifetime: the
    gateway closes it (more than once over the run), each answer that starts
    arrives whole, and the client simply reconnects.
    """
    line_site.start(max_lifetime="1500ms", lifetime_jitter="0%", close_grace="2s")
    expected_len = len(f"RESP 0 {'x' * ANSWER_PAD}\n")
    answered, reconnects, n = 0, 0, 0
    deadline = time.monotonic() + 5
    tls = tls_connect(line_site)
    try:
        while time.monotonic() < deadline:
            n += 1
            tls.sendall(f"REQ {n}\n".encode())
            answer = b""
            while len(answer) < len(f"RESP {n} ") + ANSWER_PAD + 1:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
            if not answer:  # closed before answering: fine, ask again elsewhere
                tls.close()
                tls = tls_connect(line_site)
                reconnects += 1
                continue
            assert answer == f"RESP {n} {'x' * ANSWER_PAD}\n".encode(), (
                f"answer {n} cut short: {len(answer)} of {expected_len} bytes"
            )
            answered += 1
            time.sleep(0.1)
    finally:
        tls.close()
    assert reconnects >= 2
    assert answered >= 25


def test_per_client_cap_refuses_the_extra_connection(line_site: Site) -> None:
    line_site.start(max_connections_per_client="2")
    first, second = tls_connect(line_site), tls_connect(line_site)
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            third = tls_connect(line_site)
            third.sendall(b"REQ 3\n")
            assert third.recv(10)  # never: the connection was closed at once
        for i, tls in enumerate((first, second)):
            tls.sendall(f"REQ {i}\n".encode())
            assert recv_exactly(tls, 7).startswith(f"RESP {i}".encode())
    finally:
        first.close()
        second.close()


def test_sigterm_drains_while_a_transfer_completes(line_site: Site) -> None:
    """SIGTERM stops accepting, lets the open transfer finish, then exits 0."""
    gateway = line_site.start(drain_timeout="20s")
    size = 3 * 1024 * 1024
    with tls_connect(line_site) as tls:
        tls.sendall(f"STREAM {size}\n".encode())
        got = tls.recv(65536)
        gateway.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", line_site.port), timeout=2).close()
        while len(got) < size:
            chunk = tls.recv(65536)
            assert chunk, f"transfer cut at {len(got)} of {size} bytes"
            got += chunk
    assert got == b"s" * size
    assert gateway.proc.wait(20) == 0
