"""Certificates made in memory, and written to disk the ways renewals write them."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import os
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class CertificatePair:
    """A leaf chain (leaf first) and its key, as PEM bytes."""

    chain: bytes
    key: bytes

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf, as tlsgate's status page and logs show it."""
        leaf = x509.load_pem_x509_certificates(self.chain)[0]
        return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class CertificateAuthority:
    """
    A throwaway CA (ECDSA P-256) issuing server and client certificates, so
    that tests need neither files from elsewhere nor a test-only library.
    """

    def __init__(self, name: str = "tlsgate testing CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(
                x509.BasicConstraints(ca=True, path_length=None), critical=True
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, for a client's trust store or C{client_ca}."""
        return self._cert.public_bytes(_PEM)

    def issue(
        self,
        *names: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        client: bool = False,
    ) -> CertificatePair:
        """
        A certificate for C{names} (DNS names or IP addresses; default
        C{localhost} and C{127.0.0.1}), valid from an hour ago for 30 days
        unless told otherwise; C{client} makes it a client certificate.
        """
        names = names or ("localhost", "127.0.0.1")
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        usage = (
            ExtendedKeyUsageOID.CLIENT_AUTH
            if client
            else ExtendedKeyUsageOID.SERVER_AUTH
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(hours=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName([_san(n) for n in names]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return CertificatePair(
            chain=cert.public_bytes(_PEM),
            key=key.private_bytes(
                _PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


class CertificateFiles:
    """
    A certificate and key in C{directory}, renewed the way real tools do it:

      - C{"rename"}: write a temporary file and rename it over (certbot,
        most ACME clients);
      - C{"in_place"}: rewrite the same inode (C{cp} over it, an editor);
      - C{"data_swap"}: a Kubernetes Secret volume, C{tls.crt} ->
        C{..data/tls.crt}, with C{..data} swapped to a new timestamped
        directory in one rename.

    @ivar cert: the path to give as C{cert}.
    @ivar key: the path to give as C{key}.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        pair: CertificatePair,
        *,
        how: str = "rename",
    ) -> None:
        if how not in ("rename", "in_place", "data_swap"):
            raise ValueError(f"{how!r} is not rename, in_place or data_swap")
        self.directory = Path(directory)
        self.how = how
        self._versions = itertools.count(1)
        if how == "data_swap":
            self.cert, self.key = self.directory / "tls.crt", self.directory / "tls.key"
        else:
            self.cert = self.directory / "fullchain.pem"
            self.key = self.directory / "privkey.pem"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write(pair)
        if how == "data_swap":
            os.symlink("..data/tls.crt", self.cert)
            os.symlink("..data/tls.key", self.key)

    def write(self, pair: CertificatePair) -> None:
        """Renew: put C{pair} in place, the way C{how} says."""
        self.write_raw(pair.chain, pair.key)

    def write_raw(self, chain: bytes, key: bytes) -> None:
        """Renew with any bytes, for example garbage or half a chain."""
        if self.how == "data_swap":
            version = f"..{next(self._versions):04d}"
            (self.directory / version).mkdir()
            _write(self.directory / version / "tls.crt", chain)
            _write(self.directory / version / "tls.key", key)
            os.symlink(version, self.directory / "..data_tmp")
            os.replace(self.directory / "..data_tmp", self.directory / "..data")
            return
        for path, data in ((self.key, key), (self.cert, chain)):
            if self.how == "in_place":
                _write(path, data)
            else:
                _write(path.with_name(path.name + ".tmp"), data)
                os.replace(path.with_name(path.name + ".tmp"), path)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
