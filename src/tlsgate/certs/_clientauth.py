"""
Client certificates (mutual TLS): the trust bundle, whether a certificate is
required, and the C{allow} rules checked in OpenSSL's verify callback, so a
client that fails gets a proper TLS alert during the handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from tlsgate.auth import AllowRules, identity_of
from tlsgate.certs._policy import VerifyCallback
from tlsgate.errors import CertificateError

_log = Logger()


@dataclass(frozen=True)
class ClientAuth:
    """
    @ivar ca_path: PEM bundle of CAs that client certificates must chain to.
    @ivar require: refuse clients without a certificate (C{client_auth =
        require}); otherwise one is asked for but optional (C{request}).
    @ivar allow: identity rules; C{None} admits any verified certificate.
    """

    ca_path: str
    require: bool = True
    allow: AllowRules | None = None


def parse_ca_bundle(pem: bytes, path: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a CA bundle; an empty or garbled one is an error."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as e:
        raise CertificateError(
            f"no readable PEM certificate ({e})", paths=[path]
        ) from None
    return certs


def make_verify(auth: ClientAuth, listener: str) -> VerifyCallback:
    """
    A verify callback: OpenSSL's chain check first, then, for the client's own
    certificate, the C{allow} rules. The identity (or the denial) is handed to
    the connection's application protocol when it wants it (the connection
    tracker does: C{client_verified}, C{client_denied}).
    """

    def verify(
        connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            return False
        if depth != 0:
            return True
        identity = identity_of(cert.to_cryptography())
        app: Any = getattr(connection.get_app_data(), "wrappedProtocol", None)
        if auth.allow is not None and not auth.allow.allows(identity):
            _log.info(
                "{listener}: denied client {identity}: no rule of allow = {rules} matches",
                listener=listener, identity=identity.describe(), rules=str(auth.allow),
                event="client_denied", reason="denied",
            )  # fmt: skip
            denied = getattr(app, "client_denied", None)
            if denied is not None:
                denied(identity)
            return False
        verified = getattr(app, "client_verified", None)
        if verified is not None:
            verified(identity)
        return True

    return verify
