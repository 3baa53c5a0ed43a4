"""
TLS 1.2 resumption by session ID after abrupt closes: a client that leaves
without close_notify (as most do) resumes its session every time, 20 out of
20, and each close is counted as a client close, not a TLS error.
"""

from __future__ import annotations

import socket
import ssl
import time

from tests.integration.conftest import Site, free_port, recv_exactly
from tests.integration.test_admin import get, metric


def settled_metrics(admin: int) -> str:
    """/metrics once no connection is open (the start-up port probe is counted)."""
    deadline = time.monotonic() + 10
    while True:
        _, text = get(admin, "/metrics")
        if metric(text, "tlsgate_connections_active", listener="web") == 0:
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.05)


def test_session_id_resumption_survives_20_abrupt_closes(site: Site) -> None:
    admin = free_port()
    site.start(admin=f"tcp:{admin}:interface=127.0.0.1")
    closed = "tlsgate_connections_closed_total"
    before = settled_metrics(admin)  # the start-up probe is a client close
    probes = metric(before, closed, listener="web", reason="client")
    ctx = site.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET  # by session ID, from the server's cache
    session = None
    resumed = 0
    for _ in range(21):
        raw = socket.create_connection(("127.0.0.1", site.port), timeout=10)
        tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        tls.sendall(b"ping")
        assert recv_exactly(tls, 4) == b"ping"
        resumed += tls.session_reused
        session = tls.session
        # Python's close sends no close_notify: the TCP connection just ends.
        tls.close()
    assert resumed == 20
    metrics = settled_metrics(admin)
    assert metric(metrics, "tlsgate_handshakes_total", result="ok", resumed="yes") == 20
    assert metric(metrics, closed, listener="web", reason="tls_error") == 0
    assert metric(metrics, closed, listener="web", reason="client") == probes + 21
