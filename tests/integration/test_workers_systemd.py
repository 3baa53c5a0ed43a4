"""
workers = 2 under socket activation: the supervisor adopts the socket systemd
passed (LISTEN_FDS at descriptor 3) and both workers serve it.
"""

from __future__ import annotations

import os
import socket
import subprocess

from tests.integration.conftest import (
    SERVING,
    GatewayProcess,
    Site,
    free_port,
    source_env,
    twistd,
    wait_for_log,
)
from tests.integration.workers import accepted_by_pid, served_by, wait_until


class ActivatedGateway(GatewayProcess):
    """twistd started as systemd starts a socket-activated service."""

    def __init__(self, site: Site, listening: socket.socket) -> None:
        self.workdir = site.tmp
        self.log_path = site.tmp / "gateway.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = source_env()
        env["LISTEN_FDS"] = "1"
        env["LISTEN_FDNAMES"] = "web"  # systemd 227 and later always name them
        fd = listening.fileno()

        def as_systemd_does() -> None:
            os.dup2(fd, 3)

        command = 'export LISTEN_PID=$$; exec "$0" -n --pidfile= tlsgate --config "$1"'
        self.proc = subprocess.Popen(
            ["sh", "-c", command, twistd(), str(site.ini_path())],
            cwd=site.tmp, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=as_systemd_does, pass_fds=(3,),
        )  # fmt: skip


def test_socket_activation_with_workers(site: Site) -> None:
    listening = socket.create_server(("127.0.0.1", site.port))
    admin = free_port()
    site.ini(
        workers="2",
        admin=f"tcp:{admin}:interface=127.0.0.1",
        listen="systemd:domain=INET:index=0",
    )
    site.gateway = gateway = ActivatedGateway(site, listening)
    listening.close()
    try:
        wait_for_log(gateway, SERVING, 2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{gateway.log}") from None
    wait_until(lambda: len(accepted_by_pid(admin)) == 2, what="two workers")
    seen = {served_by(site, admin)[0] for _ in range(60)}
    assert seen == set(accepted_by_pid(admin)), "one worker never served"
