"""
workers = 2: SIGTERM drains every worker and leaves no process behind, with
exit status 0; killing the supervisor leaves no orphaned worker.
"""

from __future__ import annotations

import contextlib
import os
import signal

from tests.integration.conftest import Site, free_port
from tests.integration.workers import (
    children,
    echo_once,
    held_connection,
    ready,
    wait_until,
)


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
    assert len(family) == 3, (family, gateway.log[-3000:])
    assert gateway.stop(signal.SIGTERM) == 0, gateway.log[-3000:]
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


def test_sigterm_cuts_short_a_retired_workers_long_wait(site: Site) -> None:
    """
    A worker replaced by SIGHUP keeps its open connection (up to a day), but
    SIGTERM then gives that connection drain_timeout, as any other.
    """
    import time

    from tests.integration.conftest import recv_exactly

    admin = free_port()
    gateway = site.start(workers="2", drain_timeout="1s",
                         admin=f"tcp:{admin}:interface=127.0.0.1")  # fmt: skip
    wait_until(lambda: ready(admin), what="readyz")
    family = children(gateway.proc.pid)
    with held_connection(site) as held:
        site.ini(workers="2", drain_timeout="1s", idle_timeout="1h",
                 admin=f"tcp:{admin}:interface=127.0.0.1")  # fmt: skip
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "generation 2 serves alone" in gateway.log,
            what="the new generation",
        )
        held.sendall(b"b")
        assert recv_exactly(held, 1) == b"b"  # its retired worker still serves it
        started = time.monotonic()
        assert gateway.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
    wait_until(lambda: not _alive(family + children(gateway.proc.pid)), timeout=10)


def test_a_sighup_during_the_drain_does_not_hold_the_stop_up(site: Site) -> None:
    """
    SIGTERM, then (past drain_delay, while a connection still drains) a
    SIGHUP with a changed config: the config is refused, no listener is bound
    again, and the gateway still ends with exit 0 and no process left.
    """
    import socket
    import time

    admin = free_port()
    settings = {"workers": "2", "drain_delay": "500ms", "drain_timeout": "3s",
                "admin": f"tcp:{admin}:interface=127.0.0.1"}  # fmt: skip
    gateway = site.start(**settings)
    wait_until(lambda: ready(admin), what="readyz")
    family = children(gateway.proc.pid)
    with held_connection(site):
        gateway.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # past drain_delay: the listeners are closed
        site.ini(**settings, idle_timeout="1h")
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "draining; a new config is not applied" in gateway.log,
                   what="the refusal")  # fmt: skip
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", site.port), timeout=1).close()
            raise AssertionError("the listener was bound again while draining")
    assert gateway.stop(signal.SIGTERM, timeout=20) == 0, gateway.log[-3000:]
    wait_until(lambda: not _alive(family), timeout=10, what="every process to end")
