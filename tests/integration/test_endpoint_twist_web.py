"""
C{twist web --listen tlsgate:...}: any Twisted server gets tlsgate's TLS with
one string. Behind it, the web application sees a secure request; a renewed
certificate is served on the next connection, garbage written over it keeps
the last good one, and an idle client is closed at C{idle_timeout}.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port, source_env, wait_for_port
from tlsgate.testing import CertificateAuthority, CertificateFiles

pytestmark = pytest.mark.integration

#: The resource users would write: it reports what the request says of itself.
RESOURCE = """
from twisted.web.resource import Resource

class Where(Resource):
    isLeaf = True

    def render_GET(self, request):
        return f"secure={request.isSecure()} url={request.prePathURL().decode()}".encode()

resource = Where()
"""


def twist() -> str:
    found = shutil.which("twist", path=os.path.dirname(sys.executable))
    assert found, "twist not found; install the project first (see README)"
    return found


class Web:
    """C{twist web} on a C{tlsgate:} endpoint over certificates in a temp dir."""

    def __init__(self, tmp: Path, **keys: str) -> None:
        self.ca = CertificateAuthority()
        self.files = CertificateFiles(tmp / "tls", self.ca.issue())
        self.port = free_port()
        (tmp / "where_app.py").write_text(RESOURCE)
        env = source_env()
        env["PYTHONPATH"] += os.pathsep + str(tmp)
        description = ":".join(
            [f"tlsgate:port={self.port}:interface=127.0.0.1",
             f"cert={self.files.cert}:key={self.files.key}",
             *(f"{k}={v}" for k, v in keys.items())]
        )  # fmt: skip
        self.log = tmp / "twist.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [twist(), "web", "--listen", description, "--class", "where_app.Where"],
                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for_port(self.port, self.proc)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log.read_text()}") from None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=self.ca.cert_pem.decode())
        return ctx

    def get(self) -> tuple[str, str]:
        """One request on a new connection: the body and the served fingerprint."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with self.context().wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                der = tls.getpeercert(binary_form=True)
                assert der is not None
        return answer.decode(), hashlib.sha256(der).hexdigest()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    w = Web(tmp_path, idle_timeout="1s")
    yield w
    w.stop()


def test_the_application_sees_a_secure_request(web: Web) -> None:
    body, _ = web.get()
    assert f"secure=True url=https://localhost:{web.port}/" in body


def test_a_renewed_certificate_is_served_on_the_next_connection(web: Web) -> None:
    first = web.files
    _, before = web.get()
    renewed = web.ca.issue()
    first.write(renewed)
    _, after = web.get()
    assert before != after == renewed.fingerprint


def test_garbage_over_the_certificate_keeps_the_last_good_one(web: Web) -> None:
    _, before = web.get()
    web.files.write_raw(b"-----BEGIN CERTIFICATE-----\ngarbage\n", b"not a key")
    body, after = web.get()
    assert after == before and "secure=True" in body


def test_an_idle_client_is_closed_at_idle_timeout(web: Web) -> None:
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as raw:
        with web.context().wrap_socket(raw, server_hostname="localhost") as tls:
            started = time.monotonic()
            assert tls.recv(1) == b""  # closed by the server, nothing sent
            waited = time.monotonic() - started
    assert 0.9 <= waited < 8, waited


def test_a_missing_certificate_at_start_exits_non_zero_naming_the_file(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.pem"
    out = subprocess.run(
        [twist(), "web", "--listen", f"tlsgate:port={free_port()}:cert={missing}"],
        cwd=tmp_path, env=source_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert f"tlsgate: endpoint key 'cert': {missing}" in out.stderr + out.stdout


def test_twistd_web_takes_the_endpoint_too(tmp_path: Path) -> None:
    """C{twistd web --listen tlsgate:...}: the same parser, through twistd."""
    ca = CertificateAuthority()
    files = CertificateFiles(tmp_path, ca.issue())
    port = free_port()
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
    assert twistd
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "web", "--listen",
         f"tlsgate:port={port}:interface=127.0.0.1:cert={files.cert}:key={files.key}",
         "--path", str(tmp_path)],
        cwd=tmp_path, env=source_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=ca.cert_pem.decode())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest() == files_fingerprint(files)
    finally:
        proc.terminate()
        proc.wait(20)


def files_fingerprint(files: CertificateFiles) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()


def test_the_installed_plugin_answers_serverfromstring(tmp_path: Path) -> None:
    """From a regular install (no PYTHONPATH), serverFromString knows tlsgate:."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    files = CertificateFiles(tmp_path, CertificateAuthority().issue())
    program = (
        "from twisted.internet import reactor\n"
        "from twisted.internet.endpoints import serverFromString\n"
        f"e = serverFromString(reactor, 'tlsgate:port=0:cert={files.cert}:key={files.key}')\n"
        "print(type(e).__module__, type(e).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ReloadingTLSServerEndpoint" in out.stdout
    assert str(REPO / "src") not in out.stdout
