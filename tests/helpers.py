"""Shared test helpers: certificates made in memory with trustme, written to files."""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


@dataclass(frozen=True)
class Pair:
    """A leaf certificate chain and key as PEM bytes, with the leaf's fingerprint."""

    chain: bytes
    key: bytes

    @property
    def fingerprint(self) -> str:
        leaf = x509.load_pem_x509_certificates(self.chain)[0]
        return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()


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
