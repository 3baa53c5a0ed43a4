"""
workers = 2: the per-client cap holds for the gateway as a whole across a
new generation of workers (a SIGHUP), while the replaced workers still hold
connections: the new workers count those too.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl

from tests.integration.conftest import Site, free_port, recv_exactly
from tests.integration.workers import held_connection, ready, wait_until


def _refused(site: Site) -> bool:
    """A new connection is closed at once (the cap), not served."""
    try:
        with socket.create_connection(("127.0.0.1", site.port), 10) as raw:
            with site.client_context().wrap_socket(
                raw, server_hostname="localhost"
            ) as tls:
                tls.sendall(b"a")
                return recv_exactly(tls, 1) != b"a"
    except (ssl.SSLError, OSError):
        return True


def test_the_per_client_cap_counts_the_replaced_workers_connections(
    site: Site,
) -> None:
    admin = free_port()
    settings = {"workers": "2", "max_connections_per_client": "3",
                "admin": f"tcp:{admin}:interface=127.0.0.1"}  # fmt: skip
    gateway = site.start(**settings)
    wait_until(lambda: ready(admin), what="readyz")
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(held_connection(site))
        assert _refused(site)
        site.ini(**settings, idle_timeout="1h")
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "generation 2 serves alone" in gateway.log,
            what="the new generation",
        )
        # The three held connections are on the replaced workers, which still
        # serve them; the new workers must not admit a fourth.
        for _ in range(4):
            assert _refused(site), "the cap was lost with the old generation"
    # Once they are gone, the client is served again.
    wait_until(lambda: not _refused(site), what="room once the old ones closed")
    assert gateway.stop() == 0
