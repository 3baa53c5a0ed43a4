"""
workers = 2: SIGHUP validates the new ini once; a valid one adds a listener
in every worker (both serve it), an invalid one is refused and everything
keeps serving.
"""

from __future__ import annotations

import signal

from tests.integration.conftest import Site, free_port, wait_for_port
from tests.integration.workers import (
    accepted_by_pid,
    echo_once,
    ready,
    served_by,
    status,
    wait_until,
)


def test_sighup_adds_a_listener_in_every_worker(site: Site) -> None:
    admin = free_port()
    gateway = site.start(workers="2", admin=f"tcp:{admin}:interface=127.0.0.1")
    wait_until(lambda: ready(admin), what="readyz")
    path = site.ini_path()

    # An invalid file: refused, the same workers keep serving.
    pids = set(accepted_by_pid(admin))
    good = path.read_text()
    path.write_text(good + "[listener:bad]\nlisten = tcp:nonsense\n")
    gateway.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "refusing" in gateway.log, what="the refusal")
    echo_once(site)
    assert set(accepted_by_pid(admin)) == pids

    # A second listener: served by every worker of the new generation.
    second = free_port()
    path.write_text(
        good + f"[listener:second]\nlisten = tcp:{second}:interface=127.0.0.1\n"
        f"backend = tcp:127.0.0.1:{site.backend_port}\n"
        f"cert = {site.cert}\nkey = {site.key}\n"
    )
    gateway.proc.send_signal(signal.SIGHUP)
    wait_for_port(second, gateway.proc)

    def new_generation_serves() -> bool:
        doc = status(admin)
        return ready(admin) and {w["generation"] for w in doc["workers"]} == {2}

    wait_until(new_generation_serves, what="the new workers alone")
    assert len(accepted_by_pid(admin, "second")) == 2
    seen = {served_by(site, admin, "second", port=second)[0] for _ in range(60)}
    assert len(seen) == 2, "one worker never served the new listener"
    served_by(site, admin)  # the first listener still serves
