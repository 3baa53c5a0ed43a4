"""
TLS features of a running gateway: client certificates with allow rules and
a CA bundle replaced while running, ALPN, OCSP stapling, and session
resumption bound to the certificate generation.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from tests.helpers import Pair, make_client_pair, write, write_atomically
from tests.integration.conftest import Site, free_port, recv_exactly
from tests.integration.test_admin import get, metric
from tests.unit.test_auth_and_ocsp import ocsp_for


def client_files(tmp: Path, pair: Pair, name: str) -> tuple[str, str]:
    write(tmp / f"{name}.pem", pair.chain, 0o644)
    write(tmp / f"{name}.key", pair.key)
    return str(tmp / f"{name}.pem"), str(tmp / f"{name}.key")


def mtls_echo(site: Site, cert: tuple[str, str] | None) -> bytes:
    ctx = site.client_context()
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            return recv_exactly(tls, 4)


def test_client_certificates_and_allow_rules(site: Site) -> None:
    clients = trustme.CA()
    (site.tmp / "clients.pem").write_bytes(clients.cert_pem.bytes())
    admin = free_port()
    site.start(
        client_ca=str(site.tmp / "clients.pem"),
        allow="uri:spiffe://example.org/billing/* cn:ops",
        admin=f"tcp:{admin}:interface=127.0.0.1",
    )
    billing = client_files(site.tmp, make_client_pair(
        clients, "svc", uris=("spiffe://example.org/billing/api",)), "billing")  # fmt: skip
    ops = client_files(site.tmp, make_client_pair(clients, "ops"), "ops")
    web = client_files(site.tmp, make_client_pair(
        clients, "web", uris=("spiffe://example.org/web",)), "web")  # fmt: skip
    assert mtls_echo(site, billing) == b"ping"
    assert mtls_echo(site, ops) == b"ping"
    for refused in (web, None):  # a disallowed identity, then no certificate
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            assert mtls_echo(site, refused) == b"ping"
    _, metrics = get(admin, "/metrics")
    assert (
        metric(
            metrics, "tlsgate_connections_closed_total", listener="web", reason="denied"
        )
        == 2
    )
    assert site.gateway is not None and "denied client cn:web" in site.gateway.log


def test_a_replaced_ca_bundle_applies_to_the_next_connection(site: Site) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    bundle = site.tmp / "clients.pem"
    bundle.write_bytes(old_ca.cert_pem.bytes())
    site.start(client_ca=str(bundle))
    old_client = client_files(site.tmp, make_client_pair(old_ca, "a"), "old")
    new_client = client_files(site.tmp, make_client_pair(new_ca, "b"), "new")
    assert mtls_echo(site, old_client) == b"ping"
    write_atomically(bundle, new_ca.cert_pem.bytes(), 0o644)
    assert mtls_echo(site, new_client) == b"ping"
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        mtls_echo(site, old_client)


def test_alpn_is_negotiated_in_the_servers_order(site: Site) -> None:
    """A client without ALPN is served without it; no overlap: test_alpn_no_overlap."""
    site.start(alpn="h2 http/1.1")
    offers: tuple[tuple[list[str] | None, str | None], ...] = (
        (["http/1.1", "h2"], "h2"),
        (["http/1.1"], "http/1.1"),
        (None, None),
    )
    for offered, chosen in offers:
        ctx = site.client_context()
        if offered is not None:
            ctx.set_alpn_protocols(offered)
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == chosen


def s_client_status(site: Site) -> str:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-servername",
         "localhost", "-status", "-CAfile", str(site.tmp / "ca.pem")],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return out.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_ocsp_response_is_stapled_when_valid_and_reloaded(site: Site) -> None:
    (site.tmp / "ca.pem").write_bytes(site.ca.cert_pem.bytes())
    staple = site.tmp / "ocsp.der"
    write(staple, ocsp_for(site.ca, site.first.chain), 0o644)
    gateway = site.start(ocsp_response=str(staple))
    assert "OCSP Response Status: successful" in s_client_status(site)
    write_atomically(
        staple, ocsp_for(site.ca, site.first.chain, next_update_days=-1), 0o644
    )
    assert "OCSP response: no response sent" in s_client_status(site)
    assert "not stapling OCSP response" in gateway.log and "stale" in gateway.log


def test_resumption_works_until_the_certificate_changes(site: Site) -> None:
    site.start()
    ctx = site.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # sessions are ready at once in 1.2

    def connect(session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession | None]:
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
            with ctx.wrap_socket(
                raw, server_hostname="localhost", session=session
            ) as tls:
                tls.sendall(b"ping")
                recv_exactly(tls, 4)
                return tls.session_reused, tls.session

    reused, session = connect(None)
    assert not reused
    reused, session = connect(session)
    assert reused  # a returning client resumes
    new = site.new_pair()
    write_atomically(site.key, new.key)
    write_atomically(site.cert, new.chain)
    reused, _ = connect(session)
    assert not reused  # the new generation cannot be resumed into
