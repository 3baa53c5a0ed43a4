"""
ALPN with no protocol in common: a client offering only C{foo} to a listener
with C{alpn = http/1.1} gets the fatal no_application_protocol alert
(RFC 7301 section 3.2), counted as a failed handshake; one offering
http/1.1 gets it.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.integration.conftest import Site, free_port, recv_exactly
from tests.integration.test_admin import metric
from tests.integration.test_resumption_after_abrupt_close import settled_metrics


def offer(site: Site, protocols: list[str]) -> str | None:
    ctx = site.client_context()
    ctx.set_alpn_protocols(protocols)
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            assert recv_exactly(tls, 4) == b"ping"
            return tls.selected_alpn_protocol()


def test_no_overlap_gets_the_no_application_protocol_alert(site: Site) -> None:
    admin = free_port()
    site.start(alpn="http/1.1", admin=f"tcp:{admin}:interface=127.0.0.1")
    hs = "tlsgate_handshakes_total"
    before = settled_metrics(admin)  # the start-up probe never handshakes
    failed = metric(before, hs, result="failed")
    with pytest.raises(ssl.SSLError, match="no application protocol"):
        offer(site, ["foo"])
    assert offer(site, ["h2", "http/1.1"]) == "http/1.1"
    metrics = settled_metrics(admin)
    assert metric(metrics, hs, result="failed") == failed + 1
    assert metric(metrics, hs, result="ok", resumed="no") == 1
