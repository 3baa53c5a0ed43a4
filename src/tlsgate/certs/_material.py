"""
Parsing and validating a certificate chain and its key, without any I/O.

Everything the reloading factory needs to decide "may this replace what I
serve?" is a pure function of bytes and the current time, so it is tested
without files or a reactor.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from tlsgate.errors import CertificateError

ServerKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----",
    re.DOTALL,
)


@dataclass(frozen=True)
class CertifiedKey:
    """
    A certificate chain (leaf first) with the private key of its leaf.

    Instances are only made by L{parse_certified_key}, which has checked that
    the key belongs to the leaf and that each certificate is issued by the next.
    """

    chain: tuple[x509.Certificate, ...]
    key: ServerKey

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @cached_property
    def fingerprint_sha256(self) -> str:
        return self.leaf.fingerprint(hashes.SHA256()).hex()

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The DNS and IP names of the leaf's SANs, or its CN when it has none."""
        return certificate_names(self.leaf)

    def validity_problem(self, now: datetime.datetime) -> str | None:
        """Why the leaf cannot be served at C{now}, or C{None} when it can."""
        if now < self.not_before:
            return f"certificate is not valid before {self.not_before.isoformat()}"
        if now > self.not_after:
            return f"certificate expired at {self.not_after.isoformat()}"
        return None


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The names a client may reach C{cert} by: SAN DNS and IP entries, else the CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value) for a in cns)
    dns = san.value.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)]
    return tuple(dns) + tuple(ips)


def _spki(key: object) -> bytes:
    assert hasattr(key, "public_bytes")
    der: bytes = key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return der


def parse_certified_key(
    cert_pem: bytes,
    key_pem: bytes | None,
    *,
    cert_path: str,
    key_path: str | None = None,
) -> CertifiedKey:
    """
    Parse a PEM chain and key and check that they belong together.

    @param key_pem: the key file's bytes, or C{None} to take the key from
        C{cert_pem} (a combined file, as hitch and HAProxy use).
    @raise CertificateError: naming the files, when anything is missing,
        garbled, out of order or from different pairs.
    """
    paths = [cert_path] if key_path is None else [cert_path, key_path]
    if not cert_pem.strip():
        raise CertificateError("certificate file is empty", paths=[cert_path])
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
    except ValueError as e:
        raise CertificateError(
            f"no readable PEM certificate ({e})", paths=[cert_path]
        ) from None

    key_source, key_file = (
        (cert_pem, cert_path)
        if key_pem is None
        else (
            key_pem,
            key_path or cert_path,
        )
    )
    match = _KEY_BLOCK.search(key_source)
    if match is None:
        what = "key file" if key_pem is not None else "certificate file"
        raise CertificateError(f"{what} holds no PEM private key", paths=[key_file])
    if match.group(1) == b"ENCRYPTED PRIVATE KEY":
        raise CertificateError(
            "private key is encrypted; tlsgate needs an unencrypted key",
            paths=[key_file],
        )
    try:
        key = serialization.load_pem_private_key(match.group(0), password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(
            f"unreadable private key ({e})", paths=[key_file]
        ) from None
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise CertificateError(
            f"unsupported private key type {type(key).__name__}", paths=[key_file]
        )

    key_spki = _spki(key.public_key())
    if _spki(chain[0].public_key()) != key_spki:
        for i, cert in enumerate(chain[1:], start=1):
            if _spki(cert.public_key()) == key_spki:
                raise CertificateError(
                    f"the key belongs to certificate {i + 1} of the chain;"
                    " the leaf must come first",
                    paths=paths,
                )
        raise CertificateError(
            "private key does not match the certificate", paths=paths
        )
    for i in range(len(chain) - 1):
        child, parent = chain[i], chain[i + 1]
        if child.issuer != parent.subject:
            raise CertificateError(
                f"certificate {i + 2} of the chain ({parent.subject.rfc4514_string()})"
                f" did not issue certificate {i + 1}"
                f" ({child.subject.rfc4514_string()}); order is leaf first",
                paths=[cert_path],
            )
    return CertifiedKey(chain=chain, key=key)
