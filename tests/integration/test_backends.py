"""
Backends through a real gateway: TLS to the backend with hostname checks and
sessions that survive a backend certificate change, an mTLS backend, failover
when a backend dies, and PROXY protocol headers.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from tests.helpers import write_atomically
from tests.integration.conftest import EchoHandler, EchoServer, Site, recv_exactly
from tlsgate.proxy import decode_tlvs
from tlsgate.proxy._header import PP2_TYPE_AUTHORITY, PP2_TYPE_SSL


class TLSEchoBackend:
    """
    A TLS echo server on loopback that builds its context from the files on
    disk, rebuilding it only when they change (so sessions resume until then).
    """

    def __init__(
        self, tmp: Path, ca: trustme.CA, name: str, client_ca: trustme.CA | None = None
    ):
        self.ca, self.tmp = ca, tmp
        self.cert, self.key = tmp / f"{name}.pem", tmp / f"{name}.key"
        self.install(name)
        self.client_ca = client_ca
        self.reused: list[bool] = []
        self.client_cns: list[str | None] = []
        self.failures = 0
        self._ctx: ssl.SSLContext | None = None
        self._stamp: tuple[int, int] | None = None
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def install(self, *names: str) -> None:
        leaf = self.ca.issue_cert(*names)
        write_atomically(self.key, leaf.private_key_pem.bytes())
        write_atomically(self.cert, b"".join(b.bytes() for b in leaf.cert_chain_pems))

    def _context(self) -> ssl.SSLContext:
        st = os.stat(self.cert)
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp or self._ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED
                self.client_ca.configure_trust(ctx)
            self._ctx, self._stamp = ctx, stamp
        return self._ctx

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with self._context().wrap_socket(conn, server_side=True) as tls:
                self.reused.append(tls.session_reused)
                peer = tls.getpeercert()
                cn = None
                if peer:
                    cn = dict(x[0] for x in peer["subject"]).get("commonName")
                self.client_cns.append(cn)
                while data := tls.recv(65536):
                    tls.sendall(data)
        except (ssl.SSLError, OSError):
            self.failures += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def backend_ca() -> trustme.CA:
    return trustme.CA()


def echo_once(site: Site, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with site.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(payload)
            return recv_exactly(tls, len(payload))


def test_backend_certificate_change_is_invisible_to_clients(
    site: Site, backend_ca: trustme.CA
) -> None:
    """
    Clients keep connecting while the TLS backend swaps its certificate: every
    one is served; the gateway resumed sessions before the change and dropped
    them when it met the new certificate.
    """
    (site.tmp / "backend-ca.pem").write_bytes(backend_ca.cert_pem.bytes())
    backend = TLSEchoBackend(site.tmp, backend_ca, "127.0.0.1")
    site.backend_port = backend.port
    gateway = site.start(backend_tls="on", backend_ca=str(site.tmp / "backend-ca.pem"))
    try:
        for i in range(30):
            if i == 15:
                backend.install("127.0.0.1")  # the backend renews its certificate
            assert (
                echo_once(site, f"request {i:02d}".encode())
                == f"request {i:02d}".encode()
            )
        assert any(backend.reused[:15]), "the gateway never resumed a backend session"
        assert "dropped cached TLS sessions" in gateway.log
    finally:
        backend.close()


def test_backend_with_the_wrong_name_is_refused(
    site: Site, backend_ca: trustme.CA
) -> None:
    (site.tmp / "backend-ca.pem").write_bytes(backend_ca.cert_pem.bytes())
    backend = TLSEchoBackend(site.tmp, backend_ca, "other.example")
    site.backend_port = backend.port
    gateway = site.start(backend_tls="on", backend_ca=str(site.tmp / "backend-ca.pem"))
    try:
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
            with site.client_context().wrap_socket(
                raw, server_hostname="localhost"
            ) as tls:
                tls.sendall(b"x")
                assert tls.recv(10) == b""  # closed, nothing relayed
        assert "no backend accepted the connection" in gateway.log
    finally:
        backend.close()


def test_mtls_backend_accepts_the_gateways_client_certificate(
    site: Site, backend_ca: trustme.CA
) -> None:
    clients = trustme.CA()
    leaf = clients.issue_cert("gateway.internal", common_name="gateway.internal")
    (site.tmp / "backend-ca.pem").write_bytes(backend_ca.cert_pem.bytes())
    (site.tmp / "client.pem").write_bytes(
        b"".join(b.bytes() for b in leaf.cert_chain_pems)
    )
    (site.tmp / "client.key").write_bytes(leaf.private_key_pem.bytes())
    os.chmod(site.tmp / "client.key", 0o600)
    backend = TLSEchoBackend(site.tmp, backend_ca, "app.internal", client_ca=clients)
    site.backend_port = backend.port
    site.start(
        backend_tls="on", backend_ca=str(site.tmp / "backend-ca.pem"),
        backend_server_name="app.internal", backend_cert=str(site.tmp / "client.pem"),
        backend_key=str(site.tmp / "client.key"),
    )  # fmt: skip
    try:
        assert echo_once(site) == b"ping"
        assert backend.client_cns[-1] == "gateway.internal"
    finally:
        backend.close()


def test_killed_backend_fails_over(site: Site) -> None:
    """Two backends; one dies mid-run; every client is still served."""
    spare = EchoServer(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=spare.serve_forever, daemon=True).start()
    doomed = EchoServer(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=doomed.serve_forever, daemon=True).start()
    site.start(
        backend=f"tcp:127.0.0.1:{doomed.server_address[1]} tcp:127.0.0.1:{spare.server_address[1]}"
    )
    try:
        for i in range(20):
            if i == 5:
                doomed.shutdown()
                doomed.server_close()
            assert echo_once(site) == b"ping"
    finally:
        spare.shutdown()
        spare.server_close()


class HeaderBackend:
    """Reads what the gateway sends first and keeps it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"ping" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
                conn.sendall(b"ping")


@pytest.fixture
def header_backend() -> Iterator[HeaderBackend]:
    b = HeaderBackend()
    yield b
    b.sock.close()


def test_proxy_protocol_v1(site: Site, header_backend: HeaderBackend) -> None:
    site.backend_port = header_backend.port
    site.start(proxy_protocol="v1")
    assert echo_once(site) == b"ping"
    (data,) = header_backend.received
    line, rest = data.split(b"\r\n", 1)
    info = V1Parser.parse(line + b"\r\n")
    assert info.source.host == "127.0.0.1" and info.destination.port == site.port
    assert rest == b"ping"


def test_proxy_protocol_v2_with_tls_facts(
    site: Site, header_backend: HeaderBackend
) -> None:
    site.backend_port = header_backend.port
    site.start(proxy_protocol="v2")
    assert echo_once(site) == b"ping"
    (data,) = header_backend.received
    info, rest = V2Parser().feed(data)
    assert info is not None and rest == b"ping"
    assert info.destination.port == site.port
    tlvs = decode_tlvs(data[16 + 12 : len(data) - len(rest)])
    assert tlvs[PP2_TYPE_AUTHORITY] == b"localhost"
    assert b"TLSv1.3" in tlvs[PP2_TYPE_SSL]
