"""
The byte relay between a client connection and a backend connection.

The shape is Twisted's C{portforward}: the client side stops reading until
the backend is connected, then each transport is registered as the other's
streaming producer, so a slow reader on either side pauses the fast writer on
the other and memory per connection stays bounded. Closes propagate after
the bytes already received are written (C{loseConnection} flushes).

Half-closes propagate both ways: a client that finishes sending (close_notify
or FIN, from a transport that reports it: tlsgate's L{HalfCloseTLSProtocol})
has the backend's write side shut (FIN) while the answer still flows back; a
plain TCP backend that shuts its write side has close_notify sent to the
client, which may go on sending until it closes too. A TLS backend is closed
outright when the client finishes (its close_notify would end it anyway).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import _WrappingProtocol
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocol,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer, providedBy

from tlsgate._declarations import once_per_kind
from tlsgate._halfclose import can_half_close
from tlsgate._tcp import lean_transport_on
from tlsgate.proxy import ConnectionFacts
from tlsgate.proxy import encode as encode_proxy
from tlsgate.relay._backends import BackendPool
from tlsgate.tracker._limits import CloseReason

#: Bytes the client may send between the handshake and the backend's accept.
#: The client transport is paused then, so only what one read decrypted can
#: arrive; past this something is wrong and the connection is dropped.
MAX_EARLY_BYTES = 256 * 1024


def _no_delay(transport: ITransport | None) -> None:
    """TCP_NODELAY where there is TCP under the (possibly wrapped) transport."""
    try:
        set_no_delay = transport.setTcpNoDelay  # type: ignore[union-attr]
    except AttributeError:
        return
    set_no_delay(True)


def _half_closeable(wrapper: _WrappingProtocol) -> object:
    """C{wrapper}'s declaration, with C{IHalfCloseableProtocol}."""
    if not IHalfCloseableProtocol.providedBy(wrapper):
        alsoProvides(wrapper, IHalfCloseableProtocol)
    return providedBy(wrapper)


def _shut_write(transport: object) -> None:
    """
    End the backend's input: FIN on TCP; a TLS backend is closed outright,
    since a FIN under TLS (without close_notify) would be a truncation.
    """
    if can_half_close(transport):
        transport.loseWriteConnection()  # type: ignore[attr-defined]
    else:
        transport.loseConnection()  # type: ignore[attr-defined]


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class RelayProtocol(Protocol):
    """
    The client side of one relayed connection.

    With C{connect_after_handshake}, the backend is dialled only once the TLS
    handshake completed, so failed handshakes and port scanners never reach a
    backend; without it (plain TCP use), on accept.
    """

    _log = Logger()
    backend: _BackendProtocol | None = None
    #: Set when the backend side ended the connection; read by the tracker.
    close_reason: CloseReason | None = None

    def __init__(
        self,
        pool: BackendPool,
        connect_after_handshake: bool = True,
        proxy_protocol: str | None = None,
    ) -> None:
        self.pool = pool
        self._after_handshake = connect_after_handshake
        self._proxy_protocol = proxy_protocol
        self._early: list[bytes] = []
        self._early_size = 0
        #: Cancels the backend connection under way.
        self._connecting: Callable[[], None] | None = None
        self._closed = False
        self._ending = False
        #: The client finished sending (its close_notify or FIN).
        self.client_done = False
        #: The backend finished sending; the client was sent close_notify.
        self.backend_done = False

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        if not self._after_handshake:
            self._dial()

    def handshakeCompleted(self) -> None:
        if self._after_handshake:
            self._dial()

    def _dial(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        # A dial that ended at once returns a canceller that does nothing.
        self._connecting = self.pool.dial(_BackendFactory(self), self._dialled)

    def _dialled(self, backend: IProtocol | None, reason: Failure | None) -> None:
        if reason is not None:
            self._backend_failed(reason)
        else:
            assert backend is not None
            self._backend_connected(backend)

    def _backend_connected(self, backend: IProtocol) -> None:
        self._connecting = None
        assert isinstance(backend, _BackendProtocol)
        btransport = backend.transport
        if self._closed:
            btransport.loseConnection()  # type: ignore[union-attr]
            return
        self.backend = backend
        backend.adopted = True
        assert btransport is not None and self.transport is not None
        _no_delay(btransport)
        if self._proxy_protocol is not None:
            btransport.write(
                encode_proxy(self._proxy_protocol, facts_of(self.transport))
            )
        if self._early:
            btransport.writeSequence(self._early)
            self._early = []
        if self.client_done:
            # The client said all it had to say before the backend answered.
            # Its input is over, but its output is what the backend's answer
            # fills: the backend is paused while the client does not read, as
            # on the path below, or the answer would pile up in the gateway.
            self.transport.registerProducer(btransport, True)  # type: ignore[attr-defined]
            _shut_write(btransport)
            return
        btransport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
        self.transport.registerProducer(btransport, True)  # type: ignore[attr-defined]
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _backend_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self._closed:
            return
        self.close_reason = CloseReason.BACKEND_ERROR
        self._log.error(
            "{listener}: closing client {peer}: {why}",
            listener=self.pool.name,
            peer=_peer(self.transport),
            why=reason.getErrorMessage(),
            event="backend_unavailable",
        )
        assert self.transport is not None
        # Reading was paused for the backend; resume so the client's reply to
        # close_notify (or its FIN) is seen and the connection can end.
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.backend is not None:
            self.backend.transport.write(data)  # type: ignore[union-attr]
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > MAX_EARLY_BYTES:
            self._log.error(
                "{listener}: client {peer} sent more than {limit} bytes while the"
                " backend connection was paused; closing",
                listener=self.pool.name,
                peer=_peer(self.transport),
                limit=MAX_EARLY_BYTES,
                event="early_data_overflow",
            )
            self.transport.abortConnection()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        """The client finished sending: the backend's input ends, its answer flows."""
        if self.client_done or self._closed:
            return
        self.client_done = True
        if self.backend is None and not self._early_size:
            # Nothing to deliver and no backend yet: a client that handshakes
            # and leaves (a TLS health check, a handshake benchmark) costs no
            # backend connection, as before half-close. A client that sends
            # nothing yet waits for a backend that speaks first is not served.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.backend_done:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self.backend is not None:
            btransport = self.backend.transport
            btransport.unregisterProducer()  # type: ignore[union-attr]
            _shut_write(btransport)

    def writeConnectionLost(self) -> None:
        """Our close_notify (or FIN) went out; the client may still send."""

    def backend_data(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def backend_finished(self) -> None:
        """
        The backend finished sending (a FIN): close_notify to the client, who
        may go on sending to the backend until it closes too.
        """
        if self._closed or self.transport is None or self.backend_done:
            return
        if self.client_done:
            self.backend_lost()
            return
        self.backend_done = True
        self.close_reason = CloseReason.BACKEND
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def backend_lost(self) -> None:
        """The backend closed: flush what it sent to the client, then close."""
        self.backend = None
        if self._closed or self._ending or self.transport is None:
            return
        self._ending = True
        # A client that finished sending first ended the exchange: its close.
        self.close_reason = (
            CloseReason.CLIENT if self.client_done else CloseReason.BACKEND
        )
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        if self._connecting is not None:
            cancel, self._connecting = self._connecting, None
            cancel()
        backend, self.backend = self.backend, None
        if backend is not None and backend.transport is not None:
            if not self.client_done:  # else unregistered already
                backend.transport.unregisterProducer()  # type: ignore[attr-defined]
            backend.transport.loseConnection()


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class _BackendProtocol(Protocol):
    """
    The backend side of one relayed connection: everything goes to the client.

    Over TLS, C{when_ready()} fires only once the backend's handshake
    completed, so a failed attempt (which never reaches the client) can be
    retried; only the attempt the relay adopted reports its close.
    """

    adopted = False
    remember_session: Callable[[object], None] | None = None

    def __init__(self, client: RelayProtocol) -> None:
        self.client = client
        self._ready: Deferred[_BackendProtocol] | None = None
        self._seen_data = False

    def connectionMade(self) -> None:
        # Twisted's endpoints wrap this protocol in one that means to declare
        # each interface it provides, but declares only the last of them
        # (IHandshakeListener): without IHalfCloseableProtocol there, the TCP
        # transport turns the backend's FIN into a full close.
        transport = self.transport
        lean_transport_on(
            transport.transport
            if isinstance(transport, TLSMemoryBIOProtocol)
            else transport
        )
        wrapper = getattr(self.transport, "protocol", None)
        if isinstance(wrapper, _WrappingProtocol) and wrapper._wrappedProtocol is self:
            key = (_WrappingProtocol, providedBy(wrapper))
            wrapper.__provides__ = once_per_kind(key, _half_closeable, wrapper)  # type: ignore[attr-defined]

    def when_ready(self) -> Deferred[_BackendProtocol]:
        self._ready = Deferred(lambda d: self.transport.abortConnection())  # type: ignore[union-attr]
        return self._ready

    def handshakeCompleted(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if not self._seen_data:
            self._seen_data = True
            if self.remember_session is not None:
                self.remember_session(self.transport)  # TLS 1.3 tickets are in by now
        self.client.backend_data(data)

    def readConnectionLost(self) -> None:
        """The backend's FIN (plain TCP only: a TLS layer reports no half-close)."""
        if self.adopted:
            self.client.backend_finished()
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        """Our FIN to the backend went out; its answer may still come."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.errback(reason)
        elif not self._seen_data and self.remember_session is not None:
            self.remember_session(self.transport)  # a ticket may have come alone
        if self.adopted:
            self.client.backend_lost()


class _BackendFactory(Factory):
    """Builds the one backend protocol of one client connection."""

    noisy = False

    def __init__(self, client: RelayProtocol) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> _BackendProtocol:
        return _BackendProtocol(self.client)

    # One factory per connection, with nothing to start or stop: not the
    # stock methods' count of ports and log check, twice per connection.
    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


def facts_of(transport: object) -> ConnectionFacts:
    """What a PROXY header says about the client connection under C{transport}."""

    def address(addr: object) -> tuple[str, int] | None:
        host, port = getattr(addr, "host", None), getattr(addr, "port", None)
        return (host, port) if isinstance(host, str) and isinstance(port, int) else None

    source = address(transport.getPeer())  # type: ignore[attr-defined]
    destination = address(transport.getHost())  # type: ignore[attr-defined]
    handle = getattr(transport, "getHandle", None)
    connection = handle() if handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return ConnectionFacts(source, destination)
    name = connection.get_servername()
    cn = None
    peer = connection.get_peer_certificate(as_cryptography=True)
    if peer is not None:
        cns = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns else None
    return ConnectionFacts(
        source,
        destination,
        tls_version=connection.get_protocol_version_name(),
        cipher=connection.get_cipher_name(),
        sni=name.decode("idna") if name else None,
        alpn=connection.get_alpn_proto_negotiated() or None,
        client_cn=cn,
        client_cert_verified=peer is not None,
    )


class RelayFactory(Factory):
    """
    Builds a L{RelayProtocol} per accepted connection, all sharing one pool.

    Wrap it in C{TLSMemoryBIOFactory} (or C{wrapServerTLS}) to terminate TLS.
    """

    noisy = False

    def __init__(
        self,
        pool: BackendPool,
        connect_after_handshake: bool = True,
        proxy_protocol: str | None = None,
    ) -> None:
        self.pool = pool
        self.connect_after_handshake = connect_after_handshake
        self.proxy_protocol = proxy_protocol

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:
        p = RelayProtocol(self.pool, self.connect_after_handshake, self.proxy_protocol)
        p.factory = self
        return p


def _peer(transport: ITransport | None) -> str:
    if transport is None:
        return "?"
    peer = transport.getPeer()
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)
