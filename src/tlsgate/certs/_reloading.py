"""
The reloading server context factory: the files on disk decide, per connection.

Each new connection stats the certificate and key files. Unchanged stamps hand
out the cached context and nothing else happens. Changed stamps lead to a
read, a parse and a validation *before* any swap; broken files leave the last
good context in place, are logged and counted once, and are not parsed again
until their stamps change. No signal, no watcher thread.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import stat as statmodule
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from tlsgate.certs._clientauth import ClientAuth, make_verify, parse_ca_bundle
from tlsgate.certs._material import CertifiedKey, parse_certified_key
from tlsgate.certs._ocsp import OcspStaple
from tlsgate.certs._policy import TLSPolicy, build_server_context
from tlsgate.certs._stamps import (
    RACY_WINDOW_NS,
    FileRead,
    Snapshot,
    Stamp,
    StatFunction,
    read_file,
    stamp_of,
)
from tlsgate.errors import CertificateError


@dataclass(frozen=True)
class CertificateState:
    """
    What a factory serves now, for status pages, metrics and connection tags.

    @ivar generation: 1 for the certificate loaded at start, +1 per swap.
    @ivar loaded_at: when this generation was loaded (UTC).
    @ivar last_error: why the newest files on disk are not served, if they are not.
    """

    material: CertifiedKey
    generation: int
    loaded_at: datetime.datetime
    last_error: str | None


ChangeListener = Callable[[CertificateState], None]

#: Made once per process at import. Worker processes are forked after it is
#: made, so they all derive the same session ID context for the same files
#: and generation (sessions resume on any worker), while another gateway
#: process derives different ones.
_SESSION_SECRET = secrets.token_bytes(32)


def _utc(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadingContextFactory:
    """
    A server context factory that follows its certificate files on disk.

    Usable wherever Twisted takes a server context factory:
    C{reactor.listenSSL}, C{TLSMemoryBIOFactory} and C{wrapServerTLS}.

    @param cert_path: PEM chain, leaf first; may hold the key too.
    @param key_path: PEM private key, or C{None} to take it from C{cert_path}.
    @param policy: the TLS settings every generated context gets.
    @param name: a label for log lines (the listener name in the gateway).
    @param wallclock: nanoseconds since the epoch; injected by tests.
    @param stat: C{os.stat}-like; injected by tests to pin stamps.
    @param on_context: called with each new context before it is used (the
        gateway installs its SNI callback this way).
    @param first_generation: the generation of the certificate loaded now; a
        config reload that replaces a factory continues its predecessor's
        numbering so that generations only grow.
    @raise CertificateError: at construction, when the files cannot be
        served at all. An expired certificate only logs a warning, so that
        a renewal can fix it while the gateway runs.
    """

    _log = Logger()

    def __init__(
        self,
        cert_path: str,
        key_path: str | None = None,
        *,
        policy: TLSPolicy | None = None,
        name: str = "default",
        wallclock: Callable[[], int] = time.time_ns,
        stat: StatFunction = os.stat,
        first_generation: int = 1,
        client_auth: ClientAuth | None = None,
        ocsp: OcspStaple | None = None,
        on_context: Callable[[SSL.Context], None] | None = None,
    ) -> None:
        self.cert_path = os.fspath(cert_path)
        self.key_path = None if key_path in (None, cert_path) else os.fspath(key_path)
        self.policy = policy or TLSPolicy()
        self.name = name
        self._wallclock = wallclock
        self._stat = stat
        self.client_auth = client_auth
        self.ocsp = ocsp
        self._on_context = on_context
        #: The context new connections are created from when sessions are
        #: shared between worker processes (see L{share_sessions}).
        self._session_context: SSL.Context | None = None
        self._verify = make_verify(client_auth, name) if client_auth else None
        self._paths: tuple[str, ...] = (
            (self.cert_path,)
            if self.key_path is None
            else (self.cert_path, self.key_path)
        ) + ((client_auth.ca_path,) if client_auth else ())
        self.client_cas: tuple[x509.Certificate, ...] = ()
        self.listeners: list[ChangeListener] = []
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._last_error: str | None = None
        self._good_digests: tuple[bytes | None, ...] = ()
        #: The content of the files last refused (with C{_last_error}).
        self._failed_digests: tuple[bytes | None, ...] | None = None
        self._first_generation = first_generation
        self._generation = first_generation - 1

        stamps = self._stamps()
        reads = [read_file(p) for p in self._paths]
        now = self._wallclock()
        self._seen = Snapshot.take(stamps, reads, now)
        material, cas = self._parse(reads)  # raises: nothing to fall back to yet
        problem = material.validity_problem(_utc(now))
        if problem is not None:
            self._log.critical(
                "{listener}: serving a certificate that is not valid now: {problem}."
                " Replace {cert} and new connections will get the new one.",
                listener=name,
                problem=problem,
                cert=self.cert_path,
                event="certificate_invalid_at_start",
            )
        self._install(material, cas, now)

    # -- the per-connection path ------------------------------------------

    def _stamps(self) -> tuple[Stamp | None, ...]:
        stat = self._stat
        return tuple([stamp_of(p, stat) for p in self._paths])

    def getContext(self) -> SSL.Context:
        """The context for a new connection, after a look at the files."""
        stamps = self._stamps()
        seen = self._seen
        if stamps == seen.stamps and not seen.racy:
            return self._context
        return self._refresh(stamps)

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        context = self.getContext()
        session = self._session_context
        if session is None or session is context:
            return SSL.Connection(context, None)
        # OpenSSL keeps the ticket keys and session cache of the context a
        # connection was created with, and takes the certificate and session
        # ID context from the one it is switched to.
        connection = SSL.Connection(session, None)
        connection.set_context(context)
        return connection

    def share_sessions(self) -> None:
        """
        From now on, create every connection from the context served now, so
        that processes forked after this call share its ticket keys.

        pyOpenSSL cannot set ticket keys, so the only way for several worker
        processes to accept each other's tickets is to inherit one context.
        Generation binding is unchanged: a later certificate (or client CA)
        brings its own session ID context, and sessions made under another
        generation do not resume.
        """
        self._session_context = self._context

    # -- state, for status and metrics -----------------------------------

    @property
    def state(self) -> CertificateState:
        return CertificateState(
            material=self._material,
            generation=self._generation,
            loaded_at=self._loaded_at,
            last_error=self._last_error,
        )

    @property
    def generation(self) -> int:
        return self._generation

    # -- the slow path -----------------------------------------------------

    def _refresh(self, stamps: tuple[Stamp | None, ...]) -> SSL.Context:
        """Stamps changed, or are racy: find out whether the content did."""
        reads = [read_file(p) for p in self._paths]
        now = self._wallclock()
        snapshot = Snapshot.take(stamps, reads, now)
        if stamps == self._seen.stamps and any(r.content is None for r in reads):
            # Racy stamps, but the files cannot be read again (e.g. permissions
            # after twistd dropped privileges): nothing says they changed.
            self._seen = Snapshot(self._seen.stamps, self._seen.digests, False)
            return self._context
        if snapshot.digests == self._seen.digests and stamps == self._seen.stamps:
            # Racy stamps, same content: keep checking only while still racy.
            self._seen = snapshot
            return self._context
        self._seen = snapshot
        if snapshot.digests == self._good_digests:
            # Touched, renamed or restored with the content we already serve.
            if self._last_error is not None:
                self._log.info(
                    "{listener}: certificate files are back to the served ones",
                    listener=self.name,
                    event="certificate_files_restored",
                )
            self._last_error = None
            self._failed_digests = None
            return self._context
        try:
            material, cas = self._parse(reads)
            problem = material.validity_problem(_utc(now))
            if problem is not None:
                raise CertificateError(
                    f"refusing the new files: {problem}; still serving"
                    f" {self._material.fingerprint_sha256[:16]}",
                    paths=self._paths,
                )
            self._install(material, cas, now)
        except CertificateError as e:
            if snapshot.digests == self._failed_digests and str(e) == self._last_error:
                # The same content refused the same way, seen under new stamps:
                # a look whose stat came before a rename and whose read after
                # it kept the old stamps with the new content. Logged and
                # counted already.
                return self._context
            self._failed_digests = snapshot.digests
            self._fail(e)
        return self._context

    def _parse(
        self, reads: list[FileRead]
    ) -> tuple[CertifiedKey, tuple[x509.Certificate, ...]]:
        for r in reads:
            if r.content is None:
                raise CertificateError(r.error or "unreadable", paths=[r.path])
        cas: tuple[x509.Certificate, ...] = ()
        if self.client_auth is not None:
            ca_read = reads[-1]
            reads = reads[:-1]
            cas = parse_ca_bundle(ca_read.content or b"", ca_read.path)
        cert = reads[0].content
        key = reads[1].content if len(reads) > 1 else None
        assert cert is not None
        material = parse_certified_key(
            cert, key, cert_path=self.cert_path, key_path=self.key_path
        )
        return material, cas

    def _install(
        self,
        material: CertifiedKey,
        client_cas: tuple[x509.Certificate, ...],
        now_ns: int,
    ) -> None:
        generation = self._generation + 1
        session_id = hashlib.sha256(
            b"\0".join([_SESSION_SECRET, self.name.encode(), str(generation).encode(),
                        *(d or b"" for d in self._seen.digests)])
        ).hexdigest()[:32].encode("ascii")  # fmt: skip
        try:
            context = build_server_context(
                material,
                self.policy,
                client_cas=client_cas,
                require_client_cert=self.client_auth is None
                or self.client_auth.require,
                verify=self._verify,
                ocsp=self.ocsp.for_material if self.ocsp is not None else None,
                session_id=session_id,
            )
            if self._on_context is not None:
                self._on_context(context)
        except SSL.Error as e:
            raise CertificateError(
                f"OpenSSL refused it: {e}", paths=self._paths
            ) from None
        self._warn_key_permissions()
        self._context = context
        self._material = material
        self.client_cas = client_cas
        self._generation += 1
        self._loaded_at = _utc(now_ns)
        self._good_digests = self._seen.digests
        self._last_error = None
        self._failed_digests = None
        if self._generation > self._first_generation:
            self.reloads_ok += 1
            self._log.info(
                "{listener}: now serving certificate generation {generation}"
                " ({names}, sha256 {fingerprint}, not after {not_after})",
                listener=self.name,
                generation=self._generation,
                names=", ".join(material.names),
                fingerprint=material.fingerprint_sha256,
                not_after=material.not_after.isoformat(),
                event="certificate_reloaded",
            )
        state = self.state
        for listener in list(self.listeners):
            try:
                listener(state)
            except Exception:
                # A listener's bug must not fail the connection that found
                # the new files, nor keep the other listeners from hearing.
                self._log.failure(
                    "{listener}: certificate change listener failed",
                    listener=self.name,
                    event="certificate_listener_failed",
                )

    def _fail(self, error: CertificateError) -> None:
        self.reloads_failed += 1
        self._last_error = str(error)
        self._log.error(
            "{listener}: keeping certificate generation {generation}: {error}",
            listener=self.name,
            generation=self._generation,
            error=str(error),
            event="certificate_reload_failed",
        )

    def _warn_key_permissions(self) -> None:
        key = self.key_path or self.cert_path
        try:
            mode = self._stat(key).st_mode
        except OSError:
            return
        if statmodule.S_ISREG(mode) and mode & 0o077:
            self._log.warn(
                "{listener}: private key {path} is readable by group or others"
                " (mode {mode:o}); chmod 600 it",
                listener=self.name,
                path=key,
                mode=statmodule.S_IMODE(mode),
                event="key_permissions",
            )


__all__ = ["RACY_WINDOW_NS", "CertificateState", "ReloadingContextFactory"]
