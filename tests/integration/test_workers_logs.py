"""
workers = 2: the workers' log lines reach the file twistd logs to
(--logfile), through their supervisor, not the standard output they inherit.
"""

from __future__ import annotations

from tests.integration.conftest import SERVING, GatewayProcess, Site, wait_for_port
from tests.integration.workers import echo_once, wait_until


def test_worker_logs_go_to_the_supervisors_log_file(site: Site) -> None:
    logfile = site.tmp / "tlsgate.log"
    ini = site.ini(workers="2", idle_timeout="1s")
    gateway = GatewayProcess(
        site.tmp, [f"--logfile={logfile}", "tlsgate", "--config", str(ini)]
    )
    site.gateway = gateway
    wait_for_port(site.port, gateway.proc)
    wait_until(lambda: len(SERVING.findall(logfile.read_text())) == 2, what="workers")
    echo_once(site)
    wait_until(lambda: "[worker " in logfile.read_text(), what="a worker's line")
    assert gateway.stop() == 0
    text = logfile.read_text()
    assert "[worker 0] worker 0: draining" in text
    assert "[worker 1] worker 1: draining" in text
    assert "draining" not in gateway.log  # nothing went around the log file
