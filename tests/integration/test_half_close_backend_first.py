"""
A backend that sends its part, shuts down writing and keeps reading gets
every byte a TLS 1.3 client sends after the close_notify the gateway gave
it: the backend's FIN becomes close_notify to the client, and the client's
own close_notify (then FIN) ends the connection once its bytes are through.
The connection counts as closed by the backend.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import socketserver
import ssl
from pathlib import Path

from tests.integration._halfclose import HalfCloseClient
from tests.integration.conftest import free_port, site_with_backend
from tests.integration.test_admin import metric
from tests.integration.test_resumption_after_abrupt_close import settled_metrics

GREETING = b"speak, friend\n" * 10_000
RECEIVED: queue.Queue[bytes] = queue.Queue()


class SpeaksFirstThenListens(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(GREETING)
        self.request.shutdown(socket.SHUT_WR)
        chunks = []
        while data := self.request.recv(65536):
            chunks.append(data)
        RECEIVED.put(b"".join(chunks))


def test_the_client_may_send_after_the_backend_finished(tmp_path: Path) -> None:
    admin = free_port()
    payload = os.urandom(1024 * 1024)
    with site_with_backend(tmp_path, SpeaksFirstThenListens) as site:
        site.start(admin=f"tcp:{admin}:interface=127.0.0.1")
        closed = "tlsgate_connections_closed_total"
        before = metric(
            settled_metrics(admin), closed, listener="web", reason="backend"
        )
        ctx = site.client_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        client = HalfCloseClient(site.port, ctx)
        try:
            greeting, end = client.read_until_end()
            assert greeting == GREETING
            assert end == "close_notify"
            client.send(payload)
            client.close_notify()
            client.shut_write()
            got = RECEIVED.get(timeout=20)
        finally:
            client.close()
        assert len(got) == len(payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        metrics = settled_metrics(admin)
        assert metric(metrics, closed, listener="web", reason="backend") == before + 1
