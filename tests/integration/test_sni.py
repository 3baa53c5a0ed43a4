"""SNI directories on a running gateway, driven by Python ssl and openssl s_client."""

from __future__ import annotations

import hashlib
import socket
import ssl

import pytest

from tests.helpers import make_pair, write_atomically
from tests.integration.conftest import Site


def served(
    site: Site, server_name: str | None, alpn: list[str] | None = None
) -> tuple[str, str | None]:
    ctx = site.client_context()
    ctx.check_hostname = server_name is not None
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest(), tls.selected_alpn_protocol()


def test_sni_directory_serves_by_name_and_follows_changes(site: Site) -> None:
    certs = site.tmp / "certs"
    certs.mkdir()
    a = make_pair(site.ca, "a.example")
    write_atomically(certs / "a.pem", a.chain + a.key)
    site.start(sni_dir=str(certs), alpn="h2 http/1.1")
    assert served(site, "a.example", ["h2"]) == (
        a.fingerprint,
        "h2",
    )  # ALPN carries over
    assert served(site, "localhost")[0] == site.first.fingerprint  # unknown: default
    assert served(site, None)[0] == site.first.fingerprint  # no SNI: default
    b = make_pair(site.ca, "*.b.example")
    write_atomically(certs / "b.key", b.key)
    write_atomically(certs / "b.crt", b.chain)  # added while running
    assert served(site, "x.b.example")[0] == b.fingerprint
    a2 = make_pair(site.ca, "a.example")
    write_atomically(certs / "a.pem", a2.chain + a2.key)  # replaced
    assert served(site, "a.example")[0] == a2.fingerprint


def test_sni_strict_sends_unrecognized_name(site: Site) -> None:
    certs = site.tmp / "certs"
    certs.mkdir()
    a = make_pair(site.ca, "a.example")
    write_atomically(certs / "a.pem", a.chain + a.key)
    site.start(sni_dir=str(certs), sni_strict="on")
    assert served(site, "a.example")[0] == a.fingerprint
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        served(site, "unknown.example")
    assert served(site, None)[0] == site.first.fingerprint  # no SNI: the default
