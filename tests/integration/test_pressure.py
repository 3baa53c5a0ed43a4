"""
Pressure on a real gateway: a flood of silent connections beyond
max_connections, and a client that stops reading while its backend keeps
sending. The gateway keeps serving, and its memory stays bounded.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Site, site_with_backend


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_handshake_flood_is_shed_and_real_clients_get_through(site: Site) -> None:
    """
    300 silent connections against max_connections = 100 and a 1 s handshake
    timeout: the extra connections wait in the kernel's accept queue (sized
    with backlog=, as docs/connection-limits.md advises) and are shed in turn.
    """
    gateway = site.start(
        listen=f"tcp:{site.port}:interface=127.0.0.1:backlog=1024",
        handshake_timeout="1s",
        max_connections="100",
    )
    silent = []
    for _ in range(300):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", site.port))
        silent.append(s)
    try:
        started = time.monotonic()
        assert (
            site.served() == site.first.fingerprint
        )  # waits in the backlog, then served
        assert time.monotonic() - started < 15
    finally:
        for s in silent:
            s.close()
    assert gateway.proc.poll() is None
    assert "max_connections" in gateway.log


class Firehose(socketserver.BaseRequestHandler):
    """Sends as fast as the gateway lets it, until the connection ends."""

    def handle(self) -> None:
        chunk = b"x" * 65536
        try:
            while True:
                self.request.sendall(chunk)
        except OSError:
            pass


@pytest.fixture
def firehose_site(tmp_path: Path) -> Iterator[Site]:
    with site_with_backend(tmp_path, Firehose) as site:
        yield site


def test_a_client_that_stops_reading_does_not_grow_the_gateway(
    firehose_site: Site,
) -> None:
    """Backpressure: the backend is paused, not buffered, while the client reads nothing."""
    site = firehose_site
    gateway = site.start(idle_timeout="0")
    raw = socket.create_connection(("127.0.0.1", site.port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    tls = site.client_context().wrap_socket(raw, server_hostname="localhost")
    try:
        tls.sendall(b"go")
        tls.recv(65536)  # the stream has started
        time.sleep(1)
        before = rss_kib(gateway.proc.pid)
        time.sleep(3)  # a firehose at loopback speed would be gigabytes by now
        growth = rss_kib(gateway.proc.pid) - before
        assert growth < 16 * 1024, (
            f"gateway grew by {growth} KiB while the client read nothing"
        )
        got = 0
        while got < 8 * 1024 * 1024:  # and the stream resumes when the client reads
            got += len(tls.recv(65536))
    finally:
        tls.close()
