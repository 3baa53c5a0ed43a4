"""
Key exchange groups of a running gateway: with the default list, a client
offering only P-384 and one offering only the X25519MLKEM768 post-quantum
hybrid both connect; /status and /metrics show which group each handshake
used; a SIGHUP naming an unknown group is refused and the old list serves on.
"""

from __future__ import annotations

import json
import signal
import socket
import struct

from OpenSSL import SSL
from OpenSSL._util import lib

from tests.integration.conftest import Site, free_port
from tests.integration.test_admin import get, metric
from tests.integration.test_sighup import wait_for_log


def connect(site: Site, groups: bytes) -> SSL.Connection:
    """A pyOpenSSL client restricted to C{groups}, handshaken."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    assert lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1
    site.ca.configure_trust(ctx)
    ctx.set_verify(SSL.VERIFY_PEER)
    raw = socket.create_connection(("127.0.0.1", site.port), timeout=10)
    # pyOpenSSL wants a blocking socket; a receive timeout still bounds it.
    raw.settimeout(None)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(ctx, raw)
    conn.set_connect_state()
    conn.set_tlsext_host_name(b"localhost")
    conn.do_handshake()
    return conn


def echo(conn: SSL.Connection) -> bytes:
    conn.sendall(b"ping")
    got = b""
    while len(got) < 4:
        got += conn.recv(4 - len(got))
    return got


def echo_with_groups(site: Site, groups: bytes) -> bytes:
    """Connect with a client restricted to C{groups}; echo a ping."""
    conn = connect(site, groups)
    try:
        return echo(conn)
    finally:
        conn.sock_shutdown(socket.SHUT_RDWR)
        conn.close()


def test_p384_only_and_post_quantum_only_clients_connect(site: Site) -> None:
    admin = free_port()
    site.start(admin=f"tcp:{admin}:interface=127.0.0.1")
    assert echo_with_groups(site, b"P-384") == b"ping"
    assert echo_with_groups(site, b"X25519MLKEM768") == b"ping"
    assert echo_with_groups(site, b"X25519MLKEM768") == b"ping"
    _, metrics = get(admin, "/metrics")
    by_group = "tlsgate_handshakes_by_group_total"
    assert metric(metrics, by_group, listener="web", group="P-384") == 1
    assert metric(metrics, by_group, listener="web", group="X25519MLKEM768") == 2
    _, body = get(admin, "/status")
    tls = json.loads(body)["listeners"]["web"]["tls"]
    assert tls["groups"] == ["X25519MLKEM768", "X25519", "P-256", "P-384"]
    assert tls["handshakes_by_group"] == {"X25519MLKEM768": 2, "P-384": 1}


def test_an_open_connection_shows_its_group_in_status(site: Site) -> None:
    admin = free_port()
    site.start(admin=f"tcp:{admin}:interface=127.0.0.1", groups="P-384 X25519")
    conn = connect(site, b"P-384")
    try:
        assert echo(conn) == b"ping"
        _, body = get(admin, "/status")
        connections = json.loads(body)["listeners"]["web"]["connections"]
        assert connections["by_group"] == {"P-384": 1}
    finally:
        conn.close()


def test_sighup_with_an_unknown_group_keeps_the_old_list(site: Site) -> None:
    gateway = site.start(groups="P-384")
    site.ini(groups="P-384 X25519MLKEM786")
    gateway.proc.send_signal(signal.SIGHUP)
    wait_for_log(site, "X25519MLKEM786")
    log = gateway.log
    line = next(x for x in log.splitlines() if "X25519MLKEM786" in x)
    assert "[listener:web]" in line and "groups" in line, line
    assert "did you mean 'X25519MLKEM768'" in line, line
    assert echo_with_groups(site, b"P-384") == b"ping"  # still served
