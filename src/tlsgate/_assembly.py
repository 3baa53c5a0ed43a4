"""
The assembly of one TLS listener, shared by the gateway and the endpoint.

A reloading context factory (with client auth, OCSP and the SNI directory),
a connection tracker around the application's factory, the generation tags
and rotation closes that tie the two together, and the port the tracker
pauses for C{max_connections}: every piece is wired here once, so that no
caller can forget one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
)
from twisted.protocols.tls import TLSMemoryBIOFactory

from tlsgate._halfclose import HalfCloseTLSFactory
from tlsgate._leantls import LeanTLS
from tlsgate.certs import ClientAuth, OcspStaple, ReloadingContextFactory
from tlsgate.config import ListenerConfig
from tlsgate.sni import SniDirectory, install_servername_callback
from tlsgate.tracker import ConnectionTracker, Limits, ListenerCounts


@dataclass(frozen=True)
class Certificates:
    """
    A listener's certificates: its reloading factory and the SNI directory
    that the factory's servername callback consults (kept beside it, not on
    it, so that certificates know nothing of SNI).
    """

    contexts: ReloadingContextFactory
    sni: SniDirectory | None = None


def build_contexts(
    config: ListenerConfig, first_generation: int = 1
) -> ReloadingContextFactory:
    """
    The listener's reloading context factory, with client auth, OCSP and SNI.

    @raise tlsgate.errors.CertificateError: when a file cannot be served.
    """
    return build_certificates(config, first_generation).contexts


def build_certificates(
    config: ListenerConfig, first_generation: int = 1
) -> Certificates:
    """
    The listener's reloading context factory (with client auth and OCSP) and
    its SNI directory.

    @raise tlsgate.errors.CertificateError: when a file cannot be served.
    """
    client_auth = None
    if config.client_ca is not None and config.client_auth != "none":
        client_auth = ClientAuth(
            config.client_ca,
            require=config.client_auth == "require",
            allow=config.allow,
        )
    ocsp = (
        OcspStaple(config.ocsp_response, config.name) if config.ocsp_response else None
    )
    sni = None
    if config.sni_dir is not None:
        sni = SniDirectory(
            config.sni_dir,
            lambda cert, key: ReloadingContextFactory(
                cert,
                key,
                policy=config.tls,
                name=f"{config.name} sni_dir",
                client_auth=client_auth,
            ),
            name=config.name,
        )
    on_context = None
    if sni is not None or config.sni_strict:
        on_context = partial(
            install_servername_callback, directory=sni, strict=config.sni_strict
        )
    contexts = ReloadingContextFactory(
        config.cert, config.key, policy=config.tls, name=config.name,
        first_generation=first_generation, client_auth=client_auth, ocsp=ocsp,
        on_context=on_context,
    )  # fmt: skip
    return Certificates(contexts, sni)


def tls_over(
    tracker: ConnectionTracker,
    contexts: ReloadingContextFactory,
    clock: IReactorTime,
    *,
    half_close: bool,
) -> TLSMemoryBIOFactory:
    """
    Tie C{tracker} to C{contexts} (each connection tagged with the generation
    it was made under; C{rotation_grace} closes older ones on a swap) and
    put TLS over it. A config reload that swaps a listener's certificates
    calls this again on the same tracker.
    """
    tracker.generation = lambda: contexts.generation
    contexts.listeners.append(tracker.certificate_changed)
    if not half_close:
        return TLSMemoryBIOFactory(contexts, False, tracker, clock=clock)
    factory = HalfCloseTLSFactory(contexts, False, tracker, clock=clock)
    # The gateway's own ports (tlsgate._tcp.LeanPort) accept each connection
    # as one object doing TCP and TLS; any other port uses the factory.
    factory.lean_tls = LeanTLS(factory._creatorCallable, tracker, clock)
    return factory


@dataclass(frozen=True)
class TLSStack:
    """
    TLS and connection tracking around one application factory.

    @ivar factory: what the port listens with (TLS outside, tracker inside).
    """

    contexts: ReloadingContextFactory
    tracker: ConnectionTracker
    factory: TLSMemoryBIOFactory

    @classmethod
    def around(
        cls,
        app: IProtocolFactory,
        contexts: ReloadingContextFactory,
        limits: Limits,
        clock: IReactorTime,
        *,
        name: str,
        shared: ListenerCounts | None = None,
        half_close: bool = False,
        attribute_fallback: bool = True,
    ) -> TLSStack:
        """
        Wrap C{app}: each connection is tagged with the certificate generation
        it was made under, and C{rotation_grace} closes older ones on a swap.

        @param shared: connection counts over every worker process, for caps
            that hold gateway-wide.
        @param half_close: pass the client's close_notify or FIN on as a
            half-close to an application protocol that provides
            C{IHalfCloseableProtocol} (L{HalfCloseTLSFactory}), as the
            gateway's relay does; otherwise Twisted's stock TLS layer.
        @param attribute_fallback: see L{ConnectionTracker}; the gateway's
            relay turns it off.
        """
        tracker = ConnectionTracker(
            app, limits, clock, name=name, shared=shared,
            attribute_fallback=attribute_fallback,
        )  # fmt: skip
        return cls(
            contexts, tracker, tls_over(tracker, contexts, clock, half_close=half_close)
        )

    def listening(self, port: IListeningPort | None) -> None:
        """The port now listening (C{None}: none), which C{max_connections} pauses."""
        self.tracker.port = port
