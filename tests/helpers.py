"""Shared test helpers: certificates made in memory with trustme, written to files."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.task import Clock

from tlsgate.testing import CertificatePair as Pair


def make_pair(
    ca: trustme.CA,
    *names: str,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Pair:
    """A certificate for C{names} (default C{localhost}) issued by C{ca}."""
    leaf = ca.issue_cert(
        *(names or ("localhost", "127.0.0.1")),
        not_before=not_before,
        not_after=not_after,
    )
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return Pair(chain=chain, key=leaf.private_key_pem.bytes())


def write(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Write in place (same inode), as an editor or C{cp} over the file does."""
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def write_atomically(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Write a temporary file and rename it over C{path}, as certbot does."""
    tmp = f"{path}.tmp"
    write(tmp, data, mode)
    os.replace(tmp, path)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_client_pair(
    ca: trustme.CA, cn: str, *, dns: tuple[str, ...] = (), uris: tuple[str, ...] = ()
) -> Pair:
    """A client certificate with a CN and DNS/URI SANs (trustme has no URI SANs)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(
        ca.private_key_pem.bytes(), password=None
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = utcnow()
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return Pair(
        chain=cert.public_bytes(Encoding.PEM),
        key=key.private_bytes(
            Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class Reactor(Clock):
    """The part of a reactor a TCP transport touches, counting registrations."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()
        self.changes = 0

    def addWriter(self, w: Any) -> None:
        self.changes += w not in self.writers
        self.writers.add(w)

    def removeWriter(self, w: Any) -> None:
        self.changes += w in self.writers
        self.writers.discard(w)

    def addReader(self, r: Any) -> None:
        self.changes += r not in self.readers
        self.readers.add(r)

    def removeReader(self, r: Any) -> None:
        self.changes += r in self.readers
        self.readers.discard(r)
