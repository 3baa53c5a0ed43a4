"""
The servers of the conformance run (see C{conformance.py}): the HTTP backend
they all stand in front of, the certificate they share, how each one is
started (tlsgate, a bare pyOpenSSL server, nginx C{stream}, HAProxy), and the
bare server itself, run as C{python bench/conformance_servers.py PORT CERT KEY}.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: TLS 1.2 suites every server is given (tlsgate's default).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: nginx and HAProxy run on Debian's OpenSSL 3.0, which has no X25519MLKEM768.
PEER_GROUPS = "X25519:P-256:P-384"


# -- the HTTP backend ---------------------------------------------------------


RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\nconformance backend\n"


class _Answer(socketserver.BaseRequestHandler):
    """
    Reads one request and answers it in a single write, then closes: the
    scripts expect the answer in one TLS record, which a proxy relays as it
    came (two writes could become two records).
    """

    def handle(self) -> None:
        request = b""
        with contextlib.suppress(OSError):  # probes reset their connections
            while b"\r\n\r\n" not in request:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.request.sendall(RESPONSE)


class _Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def backend() -> Iterator[int]:
    server = _Backend(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# -- certificates -----------------------------------------------------------------


def write_certificates(workdir: Path, key: str) -> tuple[Path, Path, Path]:
    """
    A CA and a C{localhost} certificate as a public CA would issue it (SAN not
    critical, 90 days, server auth), so that sslyze's Mozilla check judges the
    TLS settings and not the test certificate: chain, key, and both in one
    file; the CA goes to C{KEY-ca.pem}.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def new_key() -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        if key == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())

    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = new_key(), new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conformance CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem)
    private_pem = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (workdir / f"{key}-ca.pem").write_bytes(ca.public_bytes(pem))
    cert, private, both = (workdir / f"{key}.{n}" for n in ("crt", "key", "pem"))
    cert.write_bytes(chain)
    private.write_bytes(private_pem)
    both.write_bytes(chain + private_pem)
    for p in (private, both):
        p.chmod(0o600)
    return cert, private, both


# -- the servers under test --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on {port}:\n{log.read_text()}")


def _groups() -> str:
    """C{$CONFORMANCE_GROUPS}: other groups for tlsgate and the bare server."""
    return os.environ.get("CONFORMANCE_GROUPS", "").strip()


def nice() -> list[str]:
    return ["nice", "-n", "10"] if shutil.which("nice") else []


def _tlsgate(workdir: Path, port: int, backend_port: int, cert: Path, key: Path,
             both: Path) -> list[str]:  # fmt: skip
    ini = workdir / "tlsgate.ini"
    ini.write_text(
        f"[listener:web]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"backend = tcp:127.0.0.1:{backend_port}\ncert = {cert}\nkey = {key}\n"
        "alpn = http/1.1\n"
        + (f"groups = {os.environ['CONFORMANCE_GROUPS']}\n" if _groups() else "")
    )
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    return [twistd, "-n", "--pidfile=", "tlsgate", "--config", str(ini)]


def _bare(workdir: Path, port: int, backend_port: int, cert: Path, key: Path,
          both: Path) -> list[str]:  # fmt: skip
    return [sys.executable, __file__, str(port), str(cert), str(key)]


def _nginx(workdir: Path, port: int, backend_port: int, cert: Path, key: Path,
           both: Path) -> list[str]:  # fmt: skip
    conf = workdir / "nginx.conf"
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"
    conf.write_text(
        f"load_module {module};\ndaemon off;\nworker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log;\n"
        "events {}\nstream {\n  server {\n"
        f"    listen 127.0.0.1:{port} ssl;\n"
        f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"    ssl_ciphers {CIPHERS};\n    ssl_prefer_server_ciphers on;\n"
        f"    ssl_ecdh_curve {PEER_GROUPS};\n"
        "    ssl_session_cache shared:S:1m;\n"
        "    ssl_alpn http/1.1;\n"
        f"    proxy_pass 127.0.0.1:{backend_port};\n  }}\n}}\n"
    )
    return ["nginx", "-p", str(workdir), "-c", str(conf)]


def _haproxy(workdir: Path, port: int, backend_port: int, cert: Path, key: Path,
             both: Path) -> list[str]:  # fmt: skip
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        "global\n  maxconn 1000\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
        "  timeout server 30s\n"
        f"frontend fe\n  bind 127.0.0.1:{port} ssl crt {both} alpn http/1.1"
        f" ssl-min-ver TLSv1.2 ciphers {CIPHERS} curves {PEER_GROUPS}\n"
        "  default_backend be\n"
        f"backend be\n  server s 127.0.0.1:{backend_port}\n"
    )
    return ["haproxy", "-db", "-f", str(conf)]


TARGETS = {"tlsgate": _tlsgate, "bare": _bare, "nginx": _nginx, "haproxy": _haproxy}
PEER_BINARIES = {"nginx": "nginx", "haproxy": "haproxy"}


@contextlib.contextmanager
def serving(
    target: str, workdir: Path, backend_port: int, files: tuple[Path, Path, Path]
) -> Iterator[int]:
    """Start C{target} with the certificate C{files}; yield its port."""
    cert, private, both = files
    key = cert.stem
    port = free_port()
    command = TARGETS[target](workdir, port, backend_port, cert, private, both)
    log = workdir / f"{target}-{key}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*nice(), *command], cwd=workdir, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(port, proc, log)
            yield port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the bare pyOpenSSL server ---------------------------------------------------------


def serve_bare(port: int, cert: str, key: str) -> None:
    """
    tlsgate's server context with the plainest blocking I/O: handshake, read
    a request, answer it, close_notify. What fails here fails in OpenSSL.
    """
    from OpenSSL import SSL

    from tlsgate.certs import TLSPolicy, build_server_context
    from tlsgate.certs._load import load_certified_key

    policy = TLSPolicy(alpn=("http/1.1",))
    if _groups():
        policy = TLSPolicy(alpn=("http/1.1",), groups=tuple(_groups().split()))
    ctx = build_server_context(load_certified_key(cert, key), policy)
    listener = socket.create_server(("127.0.0.1", port))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def handle(raw: socket.socket) -> None:
        # Blocking, as pyOpenSSL needs, with receive and send timeouts.
        bound = struct.pack("ll", 10, 0)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
        conn = SSL.Connection(ctx, raw)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            conn.sendall(RESPONSE)
        except (SSL.Error, OSError):
            pass
        finally:
            # close_notify after a completed handshake, as Twisted's TLS layer
            # sends it: OpenSSL drops the session of a connection freed
            # without one, so resumption would fail for want of it.
            with contextlib.suppress(SSL.Error, OSError):
                if conn.get_finished() is not None:
                    conn.shutdown()
            raw.close()

    while True:
        raw, _ = listener.accept()
        threading.Thread(target=handle, args=(raw,), daemon=True).start()


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "src")]
    serve_bare(int(sys.argv[1]), sys.argv[2], sys.argv[3])
