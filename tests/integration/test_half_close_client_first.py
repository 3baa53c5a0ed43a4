"""
A client that sends its request, closes its sending side and waits for the
answer gets the whole answer: its close_notify (and its FIN) reaches the
backend as end of input, and the backend's reply, computed from every byte
the client sent, still reaches the client, followed by close_notify. On TLS
1.3 and, as the first direction of half-close, on TLS 1.2; with close_notify
and FIN, or with FIN alone. The connection counts as closed by the client.
"""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import ssl
from pathlib import Path

import pytest

from tests.integration._halfclose import HalfCloseClient
from tests.integration.conftest import free_port, site_with_backend
from tests.integration.test_admin import metric
from tests.integration.test_resumption_after_abrupt_close import settled_metrics

PAYLOAD = os.urandom(1024 * 1024)


class DigestAfterEOF(socketserver.BaseRequestHandler):
    """Reads to end of input, then answers its length and digest, 256 KiB of it."""

    def handle(self) -> None:
        digest = hashlib.sha256()
        size = 0
        while data := self.request.recv(65536):
            digest.update(data)
            size += len(data)
        answer = f"{size} {digest.hexdigest()}\n".encode()
        self.request.sendall(answer + digest.digest() * (256 * 1024 // 32))
        self.request.shutdown(socket.SHUT_WR)


def expected() -> bytes:
    digest = hashlib.sha256(PAYLOAD)
    head = f"{len(PAYLOAD)} {digest.hexdigest()}\n".encode()
    return head + digest.digest() * (256 * 1024 // 32)


@pytest.mark.parametrize(
    ("version", "notify"),
    [
        (ssl.TLSVersion.TLSv1_3, True),
        (ssl.TLSVersion.TLSv1_3, False),
        (ssl.TLSVersion.TLSv1_2, False),
        (ssl.TLSVersion.TLSv1_2, True),
    ],
)
def test_the_answer_to_a_half_closed_request_arrives(
    tmp_path: Path, version: ssl.TLSVersion, notify: bool
) -> None:
    admin = free_port()
    with site_with_backend(tmp_path, DigestAfterEOF) as site:
        site.start(admin=f"tcp:{admin}:interface=127.0.0.1")
        closed = "tlsgate_connections_closed_total"
        before = metric(settled_metrics(admin), closed, listener="web", reason="client")
        ctx = site.client_context()
        ctx.minimum_version = ctx.maximum_version = version
        client = HalfCloseClient(site.port, ctx)
        try:
            client.send(PAYLOAD)
            if notify:
                client.close_notify()
            client.shut_write()
            answer, end = client.read_until_end()
        finally:
            client.close()
        assert answer == expected()
        assert end == "close_notify"
        metrics = settled_metrics(admin)
        assert metric(metrics, closed, listener="web", reason="client") == before + 1
