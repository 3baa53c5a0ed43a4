"""
OCSP stapling from a DER response file, re-read when its stamp changes.

A response is stapled only when it is a successful one for the certificate
being served (serial number and issuer key hash match) and is current
(thisUpdate passed, nextUpdate not yet); otherwise nothing is stapled and the
reason is logged once per file change. A cron job or certbot hook refreshes
the file; nothing here fetches.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from twisted.logger import Logger

from tlsgate.certs._material import CertifiedKey
from tlsgate.certs._stamps import FileSetWatch, read_file

_log = Logger()


@dataclass(frozen=True)
class OcspStatus:
    """What C{tlsgate check} and /status say about a response file."""

    usable: bool
    detail: str
    next_update: datetime.datetime | None = None


def check_response(
    der: bytes, material: CertifiedKey, now: datetime.datetime
) -> OcspStatus:
    """Whether C{der} may be stapled for C{material} at C{now}, and why not."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        return OcspStatus(False, f"not a DER OCSP response ({e})")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return OcspStatus(False, f"response status {response.response_status.name}")
    leaf = material.leaf
    if response.serial_number != leaf.serial_number:
        return OcspStatus(
            False, "the response is for another certificate (serial number)"
        )
    if len(material.chain) > 1:
        raw = _subject_public_key_bits(material.chain[1].public_key())
        digest = hashlib.new(response.hash_algorithm.name, raw).digest()
        if digest != response.issuer_key_hash:
            return OcspStatus(False, "the response is for another issuer")
    next_update = response.next_update_utc
    if response.this_update_utc > now:
        return OcspStatus(False, "thisUpdate is in the future", next_update)
    if next_update is not None and next_update <= now:
        return OcspStatus(
            False, f"stale: nextUpdate was {next_update.isoformat()}", next_update
        )
    status = response.certificate_status.name.lower()
    if response.certificate_status != ocsp.OCSPCertStatus.GOOD:
        return OcspStatus(False, f"certificate status {status}", next_update)
    return OcspStatus(True, "good", next_update)


def _subject_public_key_bits(key: object) -> bytes:
    """The subjectPublicKey bits of a key (what OCSP's issuerKeyHash hashes)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    raise ValueError(f"unsupported issuer key type {type(key).__name__}")


class OcspStaple:
    """The current staple for one listener, from a file that a job refreshes."""

    def __init__(
        self,
        path: str,
        name: str = "default",
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.name = name
        self._wallclock = wallclock
        self._watch = FileSetWatch([path])
        self._der = b""
        self._verdicts: dict[str, OcspStatus] = {}

    def for_material(self, material: CertifiedKey) -> bytes:
        """DER bytes to staple for C{material} now, or C{b""} for none."""
        if self._watch.changed():
            read = read_file(self.path)
            self._der = read.content or b""
            self._verdicts = {}
            if read.content is None:
                _log.warn(
                    "{listener}: OCSP response {path} cannot be read ({error}); not stapling",
                    listener=self.name, path=self.path, error=read.error,
                    event="ocsp_unusable",
                )  # fmt: skip
        if not self._der:
            return b""
        now = datetime.datetime.fromtimestamp(self._wallclock(), datetime.UTC)
        key = material.fingerprint_sha256
        verdict = self._verdicts.get(key)
        if verdict is None or (
            verdict.usable
            and verdict.next_update is not None
            and verdict.next_update <= now
        ):
            verdict = check_response(self._der, material, now)
            self._verdicts[key] = verdict
            if not verdict.usable:
                _log.warn(
                    "{listener}: not stapling OCSP response {path}: {error}",
                    listener=self.name, path=self.path, error=verdict.detail,
                    event="ocsp_unusable",
                )  # fmt: skip
        return self._der if verdict.usable else b""
