"""
A TLS server layer that passes half-closes on, both ways.

Twisted's C{TLSMemoryBIOProtocol} answers a client's close_notify by closing
the whole connection, and a TCP FIN closes it too: a client that sends its
request, closes its sending side and waits for the answer gets nothing. TLS
1.3 made close_notify a half-close (RFC 8446 section 6.1), and Go, HAProxy
and ghostunnel relay it. This subclass does, when the protocol it wraps
provides C{IHalfCloseableProtocol}:

  - the client's close_notify, or its FIN, ends the client's stream only:
    the wrapped protocol hears C{readConnectionLost()} and may go on
    writing; the connection ends when the wrapped protocol closes it
    (C{loseConnection}), which then needs no more than the TCP close,
    since both close_notify alerts are exchanged;
  - C{loseWriteConnection()} sends close_notify and goes on reading: a TLS
    1.3 client may keep sending until it closes too (its close_notify or
    FIN then ends the connection). OpenSSL reads a TLS 1.2 client's data
    after our close_notify as well (RFC 5246 expects the client to answer
    close_notify at once, which a well-behaved one does).

Bytes after the client's close_notify are protocol violations and are
dropped unread, so they cannot grow the memory BIO. A wrapped protocol
without C{IHalfCloseableProtocol} gets the stock behaviour. Everything
else (handshake, producers, aborts, reasons) is the stock layer's.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

#: One C{recv} takes up to this many decrypted bytes: several full records.
READ_SIZE = 2**16

#: One C{bio_read} takes up to this many encrypted bytes: a relay write
#: (up to one backend read, 64 KiB) goes out as one socket write.
SEND_SIZE = 2**17


def _bio_pending() -> Any:
    """
    C{pending(connection, bio_name)}: the bytes in one of a pyOpenSSL
    connection's memory BIOs (C{"_from_ssl"}: to send; C{"_into_ssl"}: received,
    not yet read by OpenSSL), or a large number where pyOpenSSL's internals
    are not as expected (the callers then fall back to reading until OpenSSL
    says there is nothing, as the stock layer does).

    The stock layer learns that a BIO is empty from an exception (a C{bio_read}
    or C{recv} raising C{WantReadError}), about eight times per connection;
    C{BIO_get_mem_data} answers without one. This reads pyOpenSSL's private
    BIO attributes, which is why it is guarded.
    """
    try:
        from OpenSSL.SSL import _ffi, _lib  # type: ignore[attr-defined]

        length = _lib.BIO_get_mem_data
        null = _ffi.NULL
    except (ImportError, AttributeError):  # pragma: no cover - other pyOpenSSL
        return lambda connection, name: SEND_SIZE

    def pending(connection: Any, name: str) -> int:
        bio = getattr(connection, name, None)
        if bio is None:
            return SEND_SIZE
        return int(length(bio, null))

    return pending


_pending_bytes = _bio_pending()


#: A TCP transport's declaration -> what the TLS layer over it then declares:
#: the stock per-connection loop's result, computed once per kind of transport.
_DECLARED: dict[object, object] = {}


@implementer(IHalfCloseableProtocol)
class HalfCloseTLSProtocol(TLSMemoryBIOProtocol):
    """
    C{TLSMemoryBIOProtocol} with half-close both ways (see the module).

    @ivar read_closed: the client finished sending (close_notify or FIN).
    @ivar write_closed: our close_notify went out while reading goes on.
    """

    read_closed = False
    write_closed = False
    _fin = False
    _ending = False

    def makeConnection(self, transport: Any) -> None:
        # The stock method, except its loop of directlyProvides over the
        # transport's interfaces (about 7% of the samples under handshake
        # load) runs once per kind of transport, not per connection.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        key = providedBy(transport)
        declared = _DECLARED.get(key)
        if declared is None:
            for interface in key:
                directlyProvides(self, interface)
            declared = self.__dict__.get("__provides__")
            if declared is not None:
                _DECLARED[key] = declared
        else:
            self.__provides__ = declared
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        if getattr(self.factory, "is_client", True):
            self._checkHandshakeStatus()
        # A server has nothing to say before the ClientHello: the stock
        # layer's do_handshake() here only raises WantReadError.

    def _half_closeable(self) -> bool:
        return IHalfCloseableProtocol.providedBy(self.wrappedProtocol)

    def dataReceived(self, data: bytes) -> None:
        if self.read_closed:
            return  # after close_notify nothing may come; not kept, not read
        super().dataReceived(data)

    # -- writing: all of a write's records in one socket write ---------------

    def _flushSendBIO(self) -> None:
        tls, transport = self._tlsConnection, self.transport
        pending = _pending_bytes(tls, "_from_ssl")
        while pending:
            try:
                data = tls.bio_read(min(pending, SEND_SIZE))
            except WantReadError:
                return
            transport.write(data)  # type: ignore[union-attr]
            pending -= len(data)
            if pending <= 0:
                pending = _pending_bytes(tls, "_from_ssl")

    def _write(self, data: bytes) -> None:
        # The stock loop flushes the BIO after each 16 KiB record (a socket
        # write each); here OpenSSL is handed the whole write and the records
        # leave together. Twisted's BufferingTLSTransport is not used: the
        # relay writes whole backend reads, so its aggregation would only add
        # a callLater per write.
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        tls = self._tlsConnection
        while view:
            try:
                sent = tls.send(view)
            except WantReadError:
                self._flushSendBIO()
                self._bufferedWrite(view.tobytes())
                return
            except Error:
                self._tlsShutdownFinished(Failure())
                return
            view = view[sent:]
        self._flushSendBIO()

    def _flushReceiveBIO(self) -> None:
        # The stock loop, with close_notify handed to _peer_finished, and no
        # last recv() to learn that nothing is left (an exception each time)
        # when neither OpenSSL nor its input BIO holds anything more.
        tls = self._tlsConnection
        while not self._lostTLSConnection and not self.read_closed:
            try:
                data = tls.recv(READ_SIZE)
            except WantReadError:
                break
            except ZeroReturnError:
                self._peer_finished()
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
                if not tls.pending() and not _pending_bytes(tls, "_into_ssl"):
                    break
        self._flushSendBIO()

    def _peer_finished(self) -> None:
        """The client's stream ended cleanly: half-close, or end as stock."""
        self.read_closed = True
        if (
            self._ending
            or self.write_closed
            or self.disconnecting
            or not self._half_closeable()
        ):
            # Both directions are done (or half-close is not wanted): reply
            # close_notify and close, as the stock layer does.
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
            return
        IHalfCloseableProtocol(self.wrappedProtocol).readConnectionLost()

    # -- IHalfCloseableProtocol, for the TCP transport underneath ----------

    def readConnectionLost(self) -> None:
        """The client's FIN: whatever it sent before is read, then its stream ends."""
        if self._fin or self._lostTLSConnection:
            return
        self._fin = True
        if not self._handshakeDone:
            # Nothing was relayed yet: end as a stock connection would.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.read_closed:
            if self.write_closed:
                self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._tlsConnection.bio_shutdown()
        self._flushReceiveBIO()
        if not self.read_closed and not self._lostTLSConnection:
            # A FIN without close_notify (SSL_OP_IGNORE_UNEXPECTED_EOF makes
            # OpenSSL report it as a clean end): the same half-close.
            self._peer_finished()

    def writeConnectionLost(self) -> None:
        """Our side's TCP FIN went out; nothing to do."""

    # -- the wrapped protocol's transport ------------------------------------

    def loseWriteConnection(self) -> None:
        """Send close_notify and go on reading what the client sends."""
        if self.write_closed or self.disconnecting or self._lostTLSConnection:
            return
        if self.read_closed or self._appSendBuffer or not self._handshakeDone:
            # Nothing left to read, or writes wait on a read: close outright.
            self.loseConnection()
            return
        self.write_closed = True
        if self._producer is not None:
            self.unregisterProducer()
        self._shutdownTLS()

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        # A close_notify in the middle of the handshake raises ZeroReturnError
        # from do_handshake, which the stock layer's EOF test cannot read (it
        # has no arguments): a client that leaves, not a TLS fault.
        if reason is not None and isinstance(reason.value, ZeroReturnError):
            if self._reason is None:
                self._reason = Failure(ConnectionDone("close_notify in the handshake"))
            reason = None
        super()._tlsShutdownFinished(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ending = True
        super().connectionLost(reason)


class HalfCloseTLSFactory(TLSMemoryBIOFactory):
    """C{TLSMemoryBIOFactory} building L{HalfCloseTLSProtocol}s."""

    protocol = HalfCloseTLSProtocol

    def __init__(
        self,
        contextFactory: Any,
        isClient: bool,
        wrappedFactory: Any,
        clock: Any = None,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        #: Whether this side speaks first (a client sends its hello at once).
        self.is_client = isClient
