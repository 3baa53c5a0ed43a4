"""
tlsgate under systemd's tools: the shipped units verify cleanly and rate well,
socket activation hands the gateway its socket (or a one-line error when the
socket has no name), and the notify protocol reports READY/RELOADING/STOPPING
and watchdog pings to a real NOTIFY_SOCKET.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.integration._tools import require
from tests.integration.conftest import REPO, Site, free_port, source_env, twistd

UNITS = REPO / "deploy" / "systemd"


def installed_units(tmp_path: Path) -> list[str]:
    """The units as an operator installs them: the venv path is theirs."""
    bindir = os.path.dirname(twistd())
    paths = []
    for unit in ("tlsgate.service", "tlsgate.socket"):
        text = (UNITS / unit).read_text().replace("/opt/tlsgate/bin/", bindir + "/")
        (tmp_path / unit).write_text(text)
        paths.append(str(tmp_path / unit))
    return paths


def test_units_verify_without_a_warning(tmp_path: Path) -> None:
    (analyze,) = require("systemd-analyze", package="systemd")
    result = subprocess.run(
        [analyze, "verify", *installed_units(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_service_sandbox_rates_ok(tmp_path: Path) -> None:
    (analyze,) = require("systemd-analyze", package="systemd")
    service, _ = installed_units(tmp_path)
    # Exposure 0-10 is given as 0-100 here: 20 is "2.0 OK".
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", service],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def activated(
    site: Site, port: int, listen: str, fdname: str | None
) -> subprocess.Popen[bytes]:
    (activate,) = require("systemd-socket-activate", package="systemd")
    ini = site.ini(listen=listen)
    name = [f"--fdname={fdname}"] if fdname else []
    return subprocess.Popen(
        # It passes on only the variables named with -E.
        [activate, *name, "-E", "PYTHONPATH", "-l", f"127.0.0.1:{port}",
         twistd(), "-n", "--pidfile=", "tlsgate", "--config", str(ini)],
        cwd=site.tmp, env=source_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_socket_activation_serves_tls_on_the_passed_socket(
    tmp_path: Path, echo_backend: int
) -> None:
    site = Site(tmp_path, trustme.CA(), echo_backend)
    site.port = free_port()
    proc = activated(site, site.port, "systemd:domain=INET:name=web", "web")
    try:
        # systemd-socket-activate starts the gateway on the first connection,
        # which waits in the backlog meanwhile.
        time.sleep(0.3)
        assert site.served() == site.first.fingerprint
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    assert b"Traceback" not in out


def test_unnamed_inherited_socket_is_a_one_line_error(
    tmp_path: Path, echo_backend: int
) -> None:
    site = Site(tmp_path, trustme.CA(), echo_backend)
    port = free_port()
    proc = activated(site, port, "systemd:domain=INET:index=0", None)
    try:
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(30)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""  # the gateway ended without serving
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode()
    assert proc.returncode != 0
    assert "Traceback" not in text and "IndexError" not in text, text
    (line,) = [ln for ln in text.splitlines() if "cannot start" in ln]
    assert "[listener:web] listen = systemd:domain=INET:index=0" in line, text
    assert "--fdname" in line


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    folder = tempfile.mkdtemp(prefix="tlsgate-notify", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()
    shutil.rmtree(folder)


def next_message(sock: socket.socket, timeout: float = 20) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def until(sock: socket.socket, field: str, seen: list[str]) -> None:
    while True:
        message = next_message(sock)
        seen.append(message)
        if field in message.splitlines():
            return


def test_notify_socket_hears_the_lifecycle(
    tmp_path: Path, echo_backend: int, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    site = Site(tmp_path, trustme.CA(), echo_backend)
    ini = site.ini(drain_delay="500ms")
    env = {**source_env(), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        [twistd(), "-n", "--pidfile=", "tlsgate", "--config", str(ini)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen: list[str] = []
    try:
        until(sock, "READY=1", seen)
        # READY=1 means listening: a connection succeeds at once.
        assert site.served() == site.first.fingerprint
        started = time.monotonic()
        until(sock, "WATCHDOG=1", seen)
        until(sock, "WATCHDOG=1", seen)
        assert time.monotonic() - started < 5
        proc.send_signal(signal.SIGHUP)
        until(sock, "RELOADING=1", seen)
        assert any(f.startswith("MONOTONIC_USEC=") for f in seen[-1].splitlines())
        until(sock, "READY=1", seen)
        proc.send_signal(signal.SIGTERM)
        until(sock, "STOPPING=1", seen)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (seen, out.decode())
