"""Reading a certificate chain and key from files, for one-off loads (check, mTLS)."""

from __future__ import annotations

from tlsgate.certs._material import CertifiedKey, parse_certified_key
from tlsgate.certs._stamps import read_file
from tlsgate.errors import CertificateError


def load_certified_key(cert_path: str, key_path: str | None = None) -> CertifiedKey:
    """
    Read and validate C{cert_path} (and C{key_path}, else the key inside it).

    @raise CertificateError: naming the file that is missing, unreadable or wrong.
    """
    reads = [read_file(cert_path)] + ([read_file(key_path)] if key_path else [])
    for r in reads:
        if r.content is None:
            raise CertificateError(r.error or "unreadable", paths=[r.path])
    return parse_certified_key(
        reads[0].content or b"",
        reads[1].content if key_path else None,
        cert_path=cert_path,
        key_path=key_path,
    )
