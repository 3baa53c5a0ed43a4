"""
A rolling restart behind a real HAProxy loses no connection with
C{drain_delay}, and does without it.

Three gateways behind HAProxy (C{mode tcp}, C{option httpchk GET /readyz}
every 300 ms, C{fall 1}, C{retries 0}: a connection sent to a closed port
fails at once); clients connect throughout while each gateway in turn gets
SIGTERM and is started again.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import trustme

from tests.integration._tools import require
from tests.integration.conftest import Site, free_port, recv_exactly, wait_for_port

CHECK_INTERVAL = 0.3


class Clients:
    """Threads that open TLS connections through the balancer until stopped."""

    def __init__(self, port: int, context: ssl.SSLContext, threads: int = 3) -> None:
        self.port = port
        self.context = context
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(threads)
        ]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(
                    ("127.0.0.1", self.port), timeout=10
                ) as raw:
                    with self.context.wrap_socket(
                        raw, server_hostname="localhost"
                    ) as tls:
                        tls.sendall(b"ping")
                        answer = recv_exactly(tls, 4)
                if answer != b"ping":
                    raise OSError(f"answer {answer!r}")
            except OSError as e:
                with self._lock:
                    self.failures.append(f"{type(e).__name__}: {e}")
            else:
                with self._lock:
                    self.ok += 1
            time.sleep(0.02)


def haproxy_config(front: int, sites: list[tuple[Site, int]]) -> str:
    servers = "".join(
        f"    server g{i} 127.0.0.1:{site.port} check port {admin}"
        f" inter {int(CHECK_INTERVAL * 1000)}ms fall 1 rise 1\n"
        for i, (site, admin) in enumerate(sites)
    )
    return (
        "global\n    maxconn 1000\n"
        "defaults\n    mode tcp\n    retries 0\n    timeout connect 2s\n"
        "    timeout client 10s\n    timeout server 10s\n"
        f"frontend tls\n    bind 127.0.0.1:{front}\n    default_backend gateways\n"
        "backend gateways\n    balance roundrobin\n"
        "    option httpchk GET /readyz\n" + servers
    )


def connections_total(admin: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tlsgate_connections_total{")
    )


def stop_all(sites: list[tuple[Site, int]], exits: list[int]) -> None:
    for site, _ in sites:
        if site.gateway is not None:
            exits.append(site.gateway.stop())


def end(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rolling_restart(
    tmp_path: Path, echo_backend: int, drain_delay: str
) -> tuple[Clients, list[int], list[float]]:
    (haproxy,) = require("haproxy", package="haproxy")
    ca = trustme.CA()
    sites: list[tuple[Site, int]] = []
    for i in range(3):
        folder = tmp_path / f"g{i}"
        folder.mkdir()
        sites.append((Site(folder, ca, echo_backend), free_port()))
    settings = {"drain_delay": drain_delay, "drain_timeout": "10s"}

    def start(site: Site, admin: int) -> None:
        site.start(admin=f"tcp:{admin}:interface=127.0.0.1", **settings)
        wait_for_port(admin)

    exits: list[int] = []
    served_after: list[float] = []
    with contextlib.ExitStack() as cleanup:
        # Registered first, run last: every gateway started is stopped, even
        # when a start or an assertion fails half-way.
        cleanup.callback(stop_all, sites, exits)
        for site, admin in sites:
            start(site, admin)
        front = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_config(front, sites))
        log = cleanup.enter_context(open(tmp_path / "haproxy.log", "wb"))
        balancer = subprocess.Popen(
            [haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT
        )
        cleanup.callback(end, balancer)
        wait_for_port(front, balancer)
        time.sleep(3 * CHECK_INTERVAL)  # every server's first check passed
        with Clients(front, sites[0][0].client_context()) as clients:
            time.sleep(0.5)
            for site, admin in sites:
                assert site.gateway is not None
                exits.append(site.gateway.stop(signal.SIGTERM))
                assert exits[-1] == 0, site.gateway.log[-3000:]
                start(site, admin)
                time.sleep(3 * CHECK_INTERVAL)  # back in rotation
            time.sleep(0.5)
        served_after = [connections_total(admin) for _, admin in sites]
    return clients, exits, served_after


def test_rolling_restart_with_drain_delay_loses_nothing(
    tmp_path: Path, echo_backend: int
) -> None:
    clients, exits, served_after = rolling_restart(tmp_path, echo_backend, "1500ms")
    print(f"drain_delay 1.5s: {clients.ok} ok, {len(clients.failures)} failed")
    assert exits == [0] * 6, exits
    assert clients.failures == [], (
        f"{len(clients.failures)} of {clients.ok + len(clients.failures)} failed:"
        f" {clients.failures[:5]}"
    )
    assert clients.ok > 100
    # Every restarted gateway was back in rotation and served clients.
    assert all(n > 0 for n in served_after), served_after


def test_rolling_restart_without_drain_delay_loses_connections(
    tmp_path: Path, echo_backend: int
) -> None:
    """The control: the same restart with readiness and listeners closing together."""
    clients, exits, _ = rolling_restart(tmp_path, echo_backend, "0")
    print(f"drain_delay 0: {clients.ok} ok, {len(clients.failures)} failed")
    assert exits == [0] * 6, exits
    assert clients.failures, f"no failure among {clients.ok} connections"
