"""
The byte relay between a client connection and a backend connection.

The shape is Twisted's C{portforward}: the client side stops reading until
the backend is connected, then each transport is registered as the other's
streaming producer, so a slow reader on either side pauses the fast writer on
the other and memory per connection stays bounded. Closes propagate after
the bytes already received are written (C{loseConnection} flushes).
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IProtocol,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

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


@implementer(IHandshakeListener)
class RelayProtocol(Protocol):
    """
    The client side of one relayed connection.

    With C{connect_after_handshake}, the backend is dialled only once the TLS
    handshake completed, so failed handshakes and port scanners never reach a
    backend; without it (plain TCP use), on accept.
    """

    _log = Logger()
    backend: _BackendProtocol | None = None
    bytes_in = 0
    bytes_out = 0
    #: Set when the backend side ended the connection; read by the tracker.
    close_reason: CloseReason | None = None

    def __init__(self, pool: BackendPool, connect_after_handshake: bool = True) -> None:
        self.pool = pool
        self._after_handshake = connect_after_handshake
        self._early: list[bytes] = []
        self._early_size = 0
        self._connecting: object = None
        self._closed = False

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
        d = self.pool.connect(_BackendFactory(self))
        self._connecting = d
        d.addCallbacks(self._backend_connected, self._backend_failed)

    def _backend_connected(self, backend: IProtocol) -> None:
        self._connecting = None
        assert isinstance(backend, _BackendProtocol)
        btransport = backend.transport
        if self._closed:
            btransport.loseConnection()  # type: ignore[union-attr]
            return
        self.backend = backend
        assert btransport is not None and self.transport is not None
        _no_delay(btransport)
        if self._early:
            btransport.writeSequence(self._early)
            self._early = []
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
        self.bytes_in += len(data)
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

    def backend_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def backend_lost(self) -> None:
        """The backend closed: flush what it sent to the client, then close."""
        self.backend = None
        if self._closed or self.transport is None:
            return
        self.close_reason = CloseReason.BACKEND
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()  # type: ignore[attr-defined]
            self._connecting = None
        backend, self.backend = self.backend, None
        if backend is not None and backend.transport is not None:
            backend.transport.unregisterProducer()  # type: ignore[attr-defined]
            backend.transport.loseConnection()


class _BackendProtocol(Protocol):
    """The backend side of one relayed connection: everything goes to the client."""

    def __init__(self, client: RelayProtocol) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.backend_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.backend_lost()


class _BackendFactory(Factory):
    """Builds the one backend protocol of one client connection."""

    noisy = False

    def __init__(self, client: RelayProtocol) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> _BackendProtocol:
        return _BackendProtocol(self.client)


class RelayFactory(Factory):
    """
    Builds a L{RelayProtocol} per accepted connection, all sharing one pool.

    Wrap it in C{TLSMemoryBIOFactory} (or C{wrapServerTLS}) to terminate TLS.
    """

    noisy = False

    def __init__(self, pool: BackendPool, connect_after_handshake: bool = True) -> None:
        self.pool = pool
        self.connect_after_handshake = connect_after_handshake

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:
        p = RelayProtocol(self.pool, self.connect_after_handshake)
        p.factory = self
        return p


def _peer(transport: ITransport | None) -> str:
    if transport is None:
        return "?"
    peer = transport.getPeer()
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)
