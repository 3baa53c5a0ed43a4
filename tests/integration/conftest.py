"""
Real-process fixtures: C{twistd -n tlsgate} on loopback, a backend, TLS clients.

The gateway runs from this source tree (C{PYTHONPATH} holds C{src/} and the
repository root, whose C{twisted/plugins/} Twisted scans), exactly as a user
runs it, and is driven with Python's C{ssl} module.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from tests.helpers import Pair, make_pair, write
from tlsgate.config._parser import GATEWAY_KEYS

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def source_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    return env


def twistd() -> str:
    """The twistd of the Python running the tests (a venv's, if any)."""
    found = shutil.which(
        "twistd", path=os.path.dirname(sys.executable)
    ) or shutil.which("twistd")
    assert found, "twistd not found; install the project first (see README)"
    return found


#: Ports handed out by free_port, below the kernel's ephemeral range.
_GIVEN: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """
    A port free now, for a gateway to listen on in a moment. Not one from
    the kernel's ephemeral range: there, any outgoing connection made in the
    meantime (a backend dial, a client) may take it as its local port, and
    the gateway's bind then fails with "Address already in use".
    """
    low, _ = _ephemeral_range()
    top = low - 1 if low > 12000 else 60999
    for _ in range(200):
        port = random.randint(10000, top)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:  # nothing found: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process exited with {proc.returncode} before listening"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port} within {timeout}s")


#: The supervisor's line for each worker that serves.
SERVING = re.compile(r"worker \d+ \(pid \d+, generation \d+\) serving")


def wait_for_log(
    gateway: GatewayProcess, pattern: re.Pattern[str], count: int, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while len(pattern.findall(gateway.log)) < count:
        if gateway.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"waited for {count} of {pattern.pattern!r}")
        time.sleep(0.05)


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo_backend() -> Iterator[int]:
    """A plain TCP echo server on loopback; yields its port."""
    server = EchoServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class GatewayProcess:
    """One C{twistd -n tlsgate} process and what it printed."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.log_path = workdir / "gateway.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", *args],
            cwd=workdir,
            env=source_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Site:
    """A gateway with one listener over certificate files in a temp dir."""

    def __init__(self, tmp: Path, ca: trustme.CA, backend_port: int) -> None:
        self.tmp = tmp
        self.ca = ca
        self.cert = tmp / "fullchain.pem"
        self.key = tmp / "privkey.pem"
        self.port = free_port()
        self.backend_port = backend_port
        self.first = make_pair(ca)
        write(self.cert, self.first.chain, 0o644)
        write(self.key, self.first.key)
        self.gateway: GatewayProcess | None = None

    def ini_path(self) -> Path:
        return self.tmp / "gateway.ini"

    def ini(self, **extra: str) -> Path:
        # CI runs the reload, limits and admin suites again with workers = 2.
        workers = os.environ.get("TLSGATE_TEST_WORKERS")
        if workers and "workers" not in extra:
            extra["workers"] = workers
        lines = {
            "listen": f"tcp:{self.port}:interface=127.0.0.1",
            "backend": f"tcp:127.0.0.1:{self.backend_port}",
            "cert": str(self.cert),
            "key": str(self.key),
            **extra,
        }
        gateway = {k: lines.pop(k) for k in list(lines) if k in GATEWAY_KEYS}
        path = self.ini_path()
        text = "[gateway]\n" + "".join(f"{k} = {v}\n" for k, v in gateway.items())
        text += "[listener:web]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items())
        path.write_text(text)
        return path

    def start(self, **extra: str) -> GatewayProcess:
        self.gateway = GatewayProcess(
            self.tmp, ["tlsgate", "--config", str(self.ini(**extra))]
        )
        try:
            wait_for_port(self.port, self.gateway.proc)
            workers = int(self.ini_values().get("workers", "1"))
            if workers > 1:
                # The supervisor binds before its workers serve.
                wait_for_log(self.gateway, SERVING, workers)
            # The admin endpoint may listen a moment after the listeners: a
            # test that asks it at once must not race it (tcp:PORT:...).
            admin = extra.get("admin", "")
            if admin.startswith("tcp:"):
                wait_for_port(int(admin.split(":")[1]), self.gateway.proc)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.gateway.log}") from None
        return self.gateway

    def ini_values(self) -> dict[str, str]:
        lines = self.ini_path().read_text().splitlines()
        return dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition("=") for line in lines if "=" in line)
        )

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def served(self) -> str:
        """The SHA-256 fingerprint a fresh TLS connection is served (after an echo)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with self.client_context().wrap_socket(
                raw, server_hostname="localhost"
            ) as tls:
                tls.sendall(b"ping")
                assert recv_exactly(tls, 4) == b"ping"
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return hashlib.sha256(der).hexdigest()

    def new_pair(self, **kw: object) -> Pair:
        return make_pair(self.ca, **kw)  # type: ignore[arg-type]


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


@pytest.fixture
def site(tmp_path: Path, echo_backend: int) -> Iterator[Site]:
    s = Site(tmp_path, trustme.CA(), echo_backend)
    yield s
    if s.gateway is not None:
        s.gateway.stop()


@contextmanager
def site_with_backend(
    tmp_path: Path, handler: type[socketserver.BaseRequestHandler]
) -> Iterator[Site]:
    """A L{Site} in front of a threaded loopback server running C{handler}."""
    server = EchoServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s = Site(tmp_path, trustme.CA(), server.server_address[1])
    try:
        yield s
    finally:
        if s.gateway is not None:
            s.gateway.stop()
        server.shutdown()
        server.server_close()
