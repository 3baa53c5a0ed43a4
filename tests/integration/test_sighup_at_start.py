"""
A SIGHUP the moment the gateway's port accepts does not end the gateway.

The listeners bind before the reactor runs (twistd's privilegedStartService),
so for a moment the port accepts connections while the process would still
take SIGHUP's default action and die, resetting what its accept queue held:
a `systemctl reload` or a logrotate then took the service down. Polling the
port without a pause and signalling at the first accept hit that moment 11
times in 12 before the fix.
"""

from __future__ import annotations

import signal
import socket
import time

from tests.integration.conftest import GatewayProcess, Site


def accepted_at_once(port: int, proc: object, timeout: float = 30) -> None:
    """Return as soon as the port completes a TCP handshake (no pause between tries)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            continue
    raise AssertionError(f"nothing listened on {port} within {timeout}s")


def test_a_sighup_as_the_port_opens_is_kept_and_applied(site: Site) -> None:
    for attempt in range(3):
        gateway = GatewayProcess(site.tmp, ["tlsgate", "--config", str(site.ini())])
        site.gateway = gateway
        try:
            accepted_at_once(site.port, gateway.proc)
            gateway.proc.send_signal(signal.SIGHUP)
            # Served after the signal: the process lives and its listener too.
            assert site.served() == site.first.fingerprint, gateway.log
            assert gateway.proc.poll() is None, gateway.log
            log = gateway.log
            assert "Received SIGHUP" in log, log
            if "while starting" in log:
                # Kept until the reactor ran, then the config was re-read.
                assert "nothing changed" in log, log
        finally:
            assert gateway.stop() == 0, f"attempt {attempt}:\n{gateway.log}"
            site.gateway = None
