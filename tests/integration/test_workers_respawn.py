"""
workers = 2: a worker killed with SIGKILL is replaced while clients keep
being served, and the restart shows in /status and /metrics.
"""

from __future__ import annotations

import os
import signal

from tests.integration.conftest import Site, free_port
from tests.integration.test_admin import get, metric
from tests.integration.workers import (
    accepted_by_pid,
    echo_once,
    ready,
    status,
    wait_until,
)


def test_a_killed_worker_is_replaced(site: Site) -> None:
    admin = free_port()
    site.start(workers="2", admin=f"tcp:{admin}:interface=127.0.0.1")
    wait_until(lambda: ready(admin), what="readyz")
    before = set(accepted_by_pid(admin))
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Clients are served throughout: the other worker takes every connection.
    for _ in range(10):
        echo_once(site)
    now = wait_until(
        lambda: len(p := set(accepted_by_pid(admin))) == 2 and victim not in p and p,
        what="a replacement worker",
    )
    assert len(now & before) == 1
    assert status(admin)["process"]["restarts"] == 1
    assert ready(admin)
    _, text = get(admin, "/metrics")
    assert "\ntlsgate_worker_restarts_total 1.0\n" in text
    assert metric(text, "tlsgate_workers", state="serving") == 2
    assert site.gateway is not None
    assert "died after" in site.gateway.log
