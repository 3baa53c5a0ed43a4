"""
The embedded default: what C{twistd -n tlsgate} runs with no config file.

It serves HTTPS on 127.0.0.1:8443 with a self-signed ECDSA certificate made
on first start in C{./tlsgate-demo/} (and reused), in front of a small
built-in web backend on a UNIX socket that shows which certificate served the
request. Replacing the files in C{./tlsgate-demo/} changes the certificate of
the next connection, which is the whole point of tlsgate.
"""

from __future__ import annotations

import datetime
import html
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tlsgate.certs import ReloadingContextFactory
from tlsgate.config import GatewayConfig, parse_config
from tlsgate.service import GatewayService, ListenerService, build_service

DEMO_DIR = "tlsgate-demo"

DEFAULT_INI = f"""\
[gateway]
drain_timeout = 5s

[listener:demo]
listen = tcp:8443:interface=127.0.0.1
backend = unix:{DEMO_DIR}/backend.sock
cert = {DEMO_DIR}/cert.pem
key = {DEMO_DIR}/key.pem
backend_connect_timeout = 2s
"""

_log = Logger()


def ensure_demo_certificate(
    directory: str, now: datetime.datetime | None = None
) -> bool:
    """
    Make a self-signed ECDSA P-256 certificate for localhost in C{directory},
    unless a usable one is there already.

    @return: C{True} when a new certificate was written.
    """
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    now = now or datetime.datetime.now(datetime.UTC)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        try:
            with open(cert_path, "rb") as f:
                existing = x509.load_pem_x509_certificate(f.read())
            if existing.not_valid_after_utc > now:
                return False
        except ValueError:
            pass  # garbage: replaced below
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsgate demo")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class DemoPage(Resource):
    """The demo backend's only page: which certificate the gateway serves now."""

    isLeaf = True

    def __init__(self, contexts: ReloadingContextFactory) -> None:
        super().__init__()
        self.contexts = contexts

    def render_GET(self, request: Request) -> bytes:
        state = self.contexts.state
        m = state.material
        lines = [
            "tlsgate is relaying this request to its built-in demo backend.",
            "",
            f"certificate generation: {state.generation}",
            f"names:                  {', '.join(m.names)}",
            f"sha256 fingerprint:     {m.fingerprint_sha256}",
            f"not after:              {m.not_after.isoformat()}",
            f"loaded at:              {state.loaded_at.isoformat()}",
            f"certificate file:       {self.contexts.cert_path}",
            "",
            "Replace that file (and its key) and the next connection gets the new"
            " certificate: no restart, no signal.",
        ]
        if state.last_error:
            lines += ["", f"newest files on disk are not served: {state.last_error}"]
        body = "\n".join(lines) + "\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if b"html" in (request.getHeader(b"accept") or b""):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return f"<pre>{html.escape(body)}</pre>\n".encode()
        return body.encode()


def demo_config() -> GatewayConfig:
    """The embedded default config, paths relative to the current directory."""
    return parse_config(DEFAULT_INI, file="<embedded default>", base_dir=os.getcwd())


def build_demo_service(reactor: IReactorCore | None = None) -> IService:
    """The embedded default gateway plus its demo backend, as one service."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    assert reactor is not None
    created = ensure_demo_certificate(DEMO_DIR)
    gateway = build_service(demo_config(), reactor)
    assert isinstance(gateway, GatewayService)
    contexts = gateway.listeners["demo"].contexts
    site = Site(DemoPage(contexts))
    site.displayTracebacks = False
    backend = ListenerService(
        serverFromString(reactor, f"unix:{DEMO_DIR}/backend.sock:lockfile=1"), site
    )
    backend.setServiceParent(gateway)
    cert = os.path.abspath(os.path.join(DEMO_DIR, "cert.pem"))
    _log.info(
        "tlsgate demo: https://127.0.0.1:8443/ (try: curl -k https://127.0.0.1:8443/)."
        " {made} certificate {cert} with key {key}; replace them and the next"
        " connection is served the new one.",
        made="Generated" if created else "Reusing",
        cert=cert,
        key=os.path.abspath(os.path.join(DEMO_DIR, "key.pem")),
    )
    return gateway
