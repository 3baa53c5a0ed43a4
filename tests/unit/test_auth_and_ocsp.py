"""Identity rules (cn, dns, uri/SPIFFE) and OCSP response checks, as pure functions."""

from __future__ import annotations

import datetime

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.helpers import make_client_pair, make_pair, utcnow
from tlsgate.auth import Identity, identity_of, parse_allow
from tlsgate.certs import check_response, parse_certified_key


def ident(
    cn: str | None = None, dns: tuple[str, ...] = (), uris: tuple[str, ...] = ()
) -> Identity:
    return Identity(cn, dns, uris)


@pytest.mark.parametrize(
    ("rule", "identity", "allowed"),
    [
        ("cn:ops", ident("ops"), True),
        ("cn:ops", ident("ops2"), False),
        ("dns:api.corp.example", ident(dns=("API.corp.example",)), True),
        ("dns:*.corp.example", ident(dns=("api.corp.example",)), True),
        ("dns:*.corp.example", ident(dns=("corp.example",)), False),
        ("dns:*.corp.example", ident(dns=("a.b.corp.example",)), False),
        ("uri:spiffe://example.org/billing/*", ident(uris=("spiffe://example.org/billing/api",)), True),
        ("uri:spiffe://example.org/billing/*", ident(uris=("spiffe://example.org/billing",)), False),
        ("uri:spiffe://example.org/billing/*", ident(uris=("spiffe://example.org/billing/a/b",)), False),
        ("uri:spiffe://example.org/web", ident(uris=("spiffe://example.org/web",)), True),
        ("dns:*.corp.example cn:ops", ident("ops"), True),
    ],
)  # fmt: skip
def test_allow_rules(rule: str, identity: Identity, allowed: bool) -> None:
    assert parse_allow(rule).allows(identity) is allowed


@pytest.mark.parametrize(
    "bad", ["ops", "ip:1.2.3.4", "dns:a.*.example", "uri:spiffe://x/*/y", ""]
)
def test_bad_rules_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_allow(bad)


def test_identity_from_a_certificate() -> None:
    pair = make_client_pair(trustme.CA(), "billing", dns=("svc.corp.example",),
                            uris=("spiffe://example.org/billing/api",))  # fmt: skip
    cert = x509.load_pem_x509_certificate(pair.chain)
    identity = identity_of(cert)
    assert identity.cn == "billing"
    assert identity.dns == ("svc.corp.example",)
    assert identity.uris == ("spiffe://example.org/billing/api",)


def ocsp_for(
    ca: trustme.CA, leaf_pem: bytes, *, good: bool = True, next_update_days: float = 3
) -> bytes:
    """A signed OCSP response from trustme's CA about C{leaf_pem}."""
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    leaf = x509.load_pem_x509_certificates(leaf_pem)[0]
    now = utcnow()
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf, issuer=issuer, algorithm=hashes.SHA1(),
        cert_status=ocsp.OCSPCertStatus.GOOD if good else ocsp.OCSPCertStatus.REVOKED,
        this_update=now - datetime.timedelta(hours=1),
        next_update=now + datetime.timedelta(days=next_update_days),
        revocation_time=None if good else now - datetime.timedelta(days=1),
        revocation_reason=None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)  # fmt: skip
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def test_ocsp_checks() -> None:
    ca = trustme.CA()
    pair = make_pair(ca)
    material = parse_certified_key(pair.chain, pair.key, cert_path="c.pem")
    now = utcnow()
    assert check_response(ocsp_for(ca, pair.chain), material, now).usable
    stale = check_response(
        ocsp_for(ca, pair.chain, next_update_days=-0.5), material, now
    )
    assert not stale.usable and "stale" in stale.detail
    revoked = check_response(ocsp_for(ca, pair.chain, good=False), material, now)
    assert not revoked.usable and "revoked" in revoked.detail
    other = make_pair(ca)
    assert (
        "another certificate"
        in check_response(ocsp_for(ca, other.chain), material, now).detail
    )
    foreign_ca = trustme.CA()
    foreign = ocsp_for(foreign_ca, make_pair(foreign_ca).chain)
    assert not check_response(foreign, material, now).usable
    assert "not a DER OCSP response" in check_response(b"junk", material, now).detail
