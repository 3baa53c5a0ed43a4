"""
workers = 2: SIGTERM drains every worker and leaves no process behind, with
exit status 0; killing the supervisor leaves no orphaned worker.
"""

from __future__ import annotations

import os
import signal

from tests.integration.conftest import Site, free_port
from tests.integration.workers import children, echo_once, ready, wait_until


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            pass
    return out


def test_sigterm_leaves_no_process(site: Site) -> None:
    admin = free_port()
    gateway = site.start(workers="2", admin=f"tcp:{admin}:interface=127.0.0.1")
    wait_until(lambda: ready(admin), what="readyz")
    echo_once(site)
    family = children(gateway.proc.pid)
    assert len(family) == 3
    assert gateway.stop(signal.SIGTERM) == 0
    wait_until(lambda: not _alive(family), timeout=10, what="every process to end")


def test_killing_the_supervisor_leaves_no_orphan(site: Site) -> None:
    admin = free_port()
    gateway = site.start(workers="2", admin=f"tcp:{admin}:interface=127.0.0.1")
    wait_until(lambda: ready(admin), what="readyz")
    family = children(gateway.proc.pid)
    assert len(family) == 3
    os.kill(gateway.proc.pid, signal.SIGKILL)
    gateway.proc.wait()
    wait_until(lambda: not _alive(family), timeout=10, what="workers to end")
