"""
TLS to backends: hostname-checked connections whose sessions heal.

One L{BackendTLS} per listener owns the trust (C{backend_ca} or the system's)
and the optional client certificate, re-read when their files change. One
L{TLSBackendEndpoint} per backend owns a small cache of TLS sessions, so that
reconnects resume, and these rules:

 - a session is cached only from a handshake that completed and was verified;
   a failed or pending attempt never leaves anything behind;
 - a handshake that fails while resuming drops the backend's sessions and is
   retried once, at once, with a full handshake: the client waiting on this
   backend never notices (its bytes are held until the backend is ready);
 - a full handshake where a resumption was offered, with a certificate other
   than the cached session's, means the backend changed its certificate: its
   sessions are dropped (cost: the one connection that found out);
 - new CA or client certificate files drop every cached session.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsgate.certs import session_reused
from tlsgate.certs._load import load_certified_key
from tlsgate.certs._stamps import FileSetWatch, read_file
from tlsgate.errors import CertificateError

#: Sessions kept per backend; TLS 1.3 tickets are used once each.
SESSIONS_PER_BACKEND = 8

_log = Logger()


def _load_trust(path: str | None) -> Any:
    if path is None:
        return ssl.platformTrust()
    r = read_file(path)
    if r.content is None:
        raise CertificateError(r.error or "unreadable", paths=[path])
    try:
        certs = x509.load_pem_x509_certificates(r.content)
    except ValueError as e:
        raise CertificateError(
            f"no readable PEM certificate ({e})", paths=[path]
        ) from None
    return ssl.trustRootFromCertificates(
        [
            ssl.Certificate.load(c.public_bytes(Encoding.DER), crypto.FILETYPE_ASN1)
            for c in certs
        ]
    )


def _load_client_cert(
    cert: str | None, key: str | None
) -> ssl.PrivateCertificate | None:
    if cert is None:
        return None
    material = load_certified_key(cert, key)
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    key_pem = material.key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in material.chain)
    client: ssl.PrivateCertificate = ssl.PrivateCertificate.loadPEM(chain_pem + key_pem)
    return client


class BackendTLS:
    """
    A listener's backend TLS settings, with trust and client certificate
    reloaded (validated first; the last good kept) when their files change.
    """

    def __init__(
        self,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        name: str = "default",
    ) -> None:
        self.ca, self.cert, self.key, self.name = ca, cert, key, name
        self._watch = FileSetWatch([p for p in (ca, cert, key) if p])
        self._watch.changed()
        self._trust = _load_trust(ca)  # start-up: errors are fatal
        self._client = _load_client_cert(cert, key)
        self._options: dict[str, IOpenSSLClientConnectionCreator] = {}
        self.generation = 1
        self.endpoints: list[TLSBackendEndpoint] = []

    def options_for(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """Client options checking C{hostname}, after a look at the files."""
        if self._watch.changed():
            self._reload()
        options = self._options.get(hostname)
        if options is None:
            options = ssl.optionsForClientTLS(
                hostname, trustRoot=self._trust, clientCertificate=self._client
            )
            self._options[hostname] = options
        return options

    def _reload(self) -> None:
        try:
            trust = _load_trust(self.ca)
            client = _load_client_cert(self.cert, self.key)
        except CertificateError as e:
            _log.error(
                "{listener}: keeping the backend TLS files in use: {error}",
                listener=self.name, error=str(e), event="backend_tls_reload_failed",
            )  # fmt: skip
            return
        self._trust, self._client, self._options = trust, client, {}
        self.generation += 1
        for endpoint in self.endpoints:
            endpoint.forget_sessions("the backend CA or client certificate changed")
        _log.info(
            "{listener}: backend TLS files reloaded (generation {generation})",
            listener=self.name, generation=self.generation, event="backend_tls_reloaded",
        )  # fmt: skip


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    """Twisted's hostname-checking client options, plus a session to resume."""

    def __init__(
        self, options: IOpenSSLClientConnectionCreator, session: SSL.Session | None
    ) -> None:
        self._options = options
        self.session = session

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self.session is not None:
            connection.set_session(self.session)
        return connection


def peer_fingerprint(transport: Any) -> str | None:
    handle = getattr(transport, "getHandle", None)
    if handle is None:
        return None
    cert = handle().get_peer_certificate(as_cryptography=True)
    return (
        None
        if cert is None
        else hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    )


@implementer(IStreamClientEndpoint)
class TLSBackendEndpoint:
    """
    One backend over TLS: connects, resumes when it can, heals when the
    backend changed, and fires only once the handshake completed.

    The protocol built by the factory must provide C{when_ready()}, a Deferred
    that fires with the protocol on C{handshakeCompleted} and fails if the
    connection is lost first (the relay's backend protocol does).
    """

    def __init__(
        self, plain: IStreamClientEndpoint, tls: BackendTLS, hostname: str,
        description: str = "",
    ) -> None:  # fmt: skip
        self.plain = plain
        self.tls = tls
        self.hostname = hostname
        self.description = description or hostname
        self.sessions: deque[tuple[SSL.Session, str | None]] = deque(
            maxlen=SESSIONS_PER_BACKEND
        )
        tls.endpoints.append(self)

    def forget_sessions(self, why: str) -> None:
        if self.sessions:
            self.sessions.clear()
            _log.info(
                "{backend}: dropped cached TLS sessions: {why}",
                backend=self.description, why=why, event="backend_sessions_dropped",
            )  # fmt: skip

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._connect(protocolFactory, resume=True)

    def _connect(self, factory: IProtocolFactory, resume: bool) -> Deferred[IProtocol]:
        options = self.tls.options_for(self.hostname)  # may drop sessions first
        offered = self.sessions.pop() if resume and self.sessions else None
        creator = _Creator(options, offered[0] if offered else None)
        d: Deferred[Any] = wrapClientTLS(creator, self.plain).connect(factory)
        d.addCallback(lambda protocol: protocol.when_ready())

        def ready(protocol: Any) -> Any:
            transport = protocol.transport
            fingerprint = peer_fingerprint(transport)
            reused = session_reused(transport)
            if (
                offered is not None
                and not reused
                and offered[1] not in (None, fingerprint)
            ):
                self.forget_sessions("the backend presents a new certificate")
            protocol.remember_session = self._remember
            self._remember(transport)
            return protocol

        def failed(reason: Failure) -> Any:
            if offered is not None and not reason.check(CancelledError):
                self.forget_sessions(
                    f"a resumed handshake failed ({reason.getErrorMessage()})"
                )
                return self._connect(factory, resume=False)
            return reason

        d.addCallbacks(ready, failed)
        return d

    def _remember(self, transport: Any) -> None:
        """Keep the connection's newest session (TLS 1.3 tickets come late)."""
        handle = getattr(transport, "getHandle", None)
        if handle is None:
            return
        session = handle().get_session()
        if session is None or any(s is session for s, _ in self.sessions):
            return
        self.sessions.append((session, peer_fingerprint(transport)))
