"""
workers = 2: a worker retired by a new generation accepts nothing, yet it
still sees a certificate renewal, so its old connections are closed by
rotation_grace like every other.
"""

from __future__ import annotations

import signal

from tests.helpers import write_atomically
from tests.integration.conftest import Site, free_port
from tests.integration.test_admin import get, metric
from tests.integration.workers import held_connection, ready, wait_until


def test_a_retired_workers_connection_is_closed_by_rotation_grace(site: Site) -> None:
    admin = free_port()
    settings = {"workers": "2", "rotation_grace": "1s",
                "admin": f"tcp:{admin}:interface=127.0.0.1"}  # fmt: skip
    gateway = site.start(**settings)
    wait_until(lambda: ready(admin), what="readyz")
    with held_connection(site) as held:
        site.ini(**settings, idle_timeout="1h")
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "generation 2 serves alone" in gateway.log,
            what="the new generation",
        )
        renewed = site.new_pair()
        write_atomically(site.key, renewed.key)
        write_atomically(site.cert, renewed.chain, 0o644)
        # The retired worker looks at its files every 5 s, then closes
        # the connection within rotation_grace.
        held.settimeout(15)
        assert held.recv(10) == b"", "the old connection was not closed"
    wait_until(lambda: site.served() == renewed.fingerprint, what="the renewal")
    code, body = get(admin, "/metrics")
    assert code == 200
    closed = "tlsgate_connections_closed_total"
    assert metric(body, closed, listener="web", reason="rotation") == 1
    assert gateway.stop() == 0
