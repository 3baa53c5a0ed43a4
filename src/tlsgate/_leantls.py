"""
The gateway's TLS server transport: the accepted TCP connection and its TLS
layer in one object.

Stock Twisted puts TLS over TCP as a protocol (C{TLSMemoryBIOProtocol})
wrapped around the application's, under a TCP transport of its own: every
read passes two objects, every write three, and each connection's start,
pauses and end are relayed between them (makeConnection, producer
membranes, two C{connectionLost}s). On the gateway's path those hops cost
3.6% of the instructions per relayed connection (bench/instructions.py).
L{LeanTLSServer} is a L{LeanServer} that does the TLS itself: a socket read
goes into OpenSSL's memory BIO and out to the protocol in one method, an
application write leaves as records in one socket write, and the
application's producer is registered on the TCP transport directly.

What the application sees is L{HalfCloseTLSProtocol}'s contract, kept
exactly (the gateway's tests run over this class, the embeddable layer's
over that one):

  - C{ISSLTransport} and C{INegotiated} (C{getHandle()} is the
    C{SSL.Connection}, as for Twisted's TLS layer), C{IHandshakeListener}'s
    C{handshakeCompleted()} once the handshake is done, writes before it
    held until then;
  - half-close both ways for an C{IHalfCloseableProtocol}: the client's
    close_notify or FIN is C{readConnectionLost()}; C{loseWriteConnection()}
    sends close_notify and reads on;
  - C{loseConnection()} waits for the application's producer to go, sends
    close_notify, and closes TCP once the client answers it (or once it has
    already sent its own); a connection whose handshake never finished is
    aborted instead, as the stock layer does;
  - a TLS error (garbage, a failed handshake) sends OpenSSL's alert and
    reaches C{connectionLost} as the C{SSL.Error}; an EOF in violation of
    TLS as C{ConnectionLost}; a close_notify in the middle of the handshake
    as C{ConnectionDone};
  - the memory BIOs are renewed after bursts, and a TLS 1.3 server's session
    tickets leave with the first answer (L{tlsgate._tlscore}, which both
    use).

Two differences, both deliberate: C{stopProducing()} (the backend went
while this connection produced for it) closes with close_notify, where
Twisted's layer passed it to the TCP transport, which closed without one;
and a push producer still registered when the TLS connection ends is let
go without a C{stopProducing()}, where Twisted's TCP transport tells it as
the connection goes. The relay closes its backend itself as it hears of the
end (with close_notify, for a TLS backend), which that call would overtake
with a bare FIN. A pull producer is driven as a push one (C{_PullToPush}),
as Twisted's layer does, and stopped when the TLS connection ends.

Only the gateway's own listening ports make these (L{tlsgate._tcp.LeanPort},
when its factory carries a L{LeanTLS}); embedders' ports keep Twisted's
transports and TLS layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from errno import EWOULDBLOCK
from functools import partial
from typing import Any

from OpenSSL.SSL import Connection, Error, ZeroReturnError
from twisted.internet import abstract, main, tcp
from twisted.internet._producer_helpers import _PullToPush
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableDescriptor,
    IHandshakeListener,
    ILoggingContext,
    INegotiated,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IReadWriteDescriptor,
    ISSLTransport,
    ISystemHandle,
    ITCPTransport,
)
from twisted.protocols.tls import _representsEOF
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer_only

from tlsgate._dispatch import HALF_CLOSING
from tlsgate._membio import (
    BURST,
    NULL,
    handshake,
    mem_data,
    write_in,
)
from tlsgate._tcp import LeanServer, _Lean
from tlsgate._tlscore import TLSServerCore

#: Makes the C{SSL.Connection} of one accepted connection (Twisted's TLS
#: factory's C{_creatorCallable}: the connection creator's
#: C{serverConnectionForTLS}, in accept state, its app data the transport).
Creator = Callable[[Any], Connection]


@dataclass(frozen=True)
class LeanTLS:
    """
    What a L{tlsgate._tcp.LeanPort} needs to accept connections as
    L{LeanTLSServer}s: given as its factory's C{lean_tls} attribute, which
    L{tlsgate._assembly.tls_over} sets on every half-closing TLS factory it
    makes. Only a C{LeanPort} reads it, and only the gateway's own listeners
    are C{LeanPort}s; any other port builds the factory's protocols.
    """

    #: Makes each connection's C{SSL.Connection} (the TLS factory's).
    creator: Creator
    #: Builds the protocol over TLS (the tracker, inside the TLS factory).
    factory: IProtocolFactory
    #: The clock of the BIO renewals (the TLS factory's).
    clock: IReactorTime

    #: Makes one accepted connection's transport, called as a port calls its
    #: own C{transport(skt, protocol, addr, port, sessionno, reactor)}.
    transport: Callable[..., LeanTLSServer] = field(init=False)

    def __post_init__(self) -> None:
        made = partial(LeanTLSServer, creator=self.creator, clock=self.clock)
        object.__setattr__(self, "transport", made)


@implementer_only(
    ISSLTransport,
    INegotiated,
    ITCPTransport,
    ISystemHandle,
    IPushProducer,
    IConsumer,
    IReadWriteDescriptor,
    IHalfCloseableDescriptor,
    ILoggingContext,
)
class LeanTLSServer(TLSServerCore, LeanServer):
    """
    An accepted TCP connection with its TLS server side (see the module;
    L{TLSServerCore} has the half-close flags, C{read_closed} and
    C{write_closed}).
    """

    #: The handshake completed.
    _handshakeDone = False
    #: The TLS layer is finished (an error, or both close_notify alerts):
    #: nothing more is decrypted or encrypted.
    _lostTLSConnection = False
    #: The application called loseConnection() (close_notify once its
    #: producer and held writes are gone) or abortConnection(). (The TCP
    #: side's own flag is C{disconnecting}, set only when the socket is to
    #: close.)
    _tls_closing = False
    #: The application aborted: nothing more reaches it.
    _aborted = False
    #: Why the TLS layer ended, when that, not the TCP close, is the reason.
    _tls_reason: Failure | None = None
    #: Application writes that OpenSSL could not take yet (before the
    #: handshake completed), sent once it has (a list only then).
    _app_buffer: Sequence[bytes] = ()
    #: The producer these held writes paused (and only it is resumed once
    #: they go): pausing and resuming stay paired, as through Twisted's
    #: producer membrane, whatever the producer and whenever it registered.
    _held_producer: Any = None

    #: OpenSSL's output goes straight to the socket (the lean TCP write),
    #: and the TCP close is the lean transport's.
    _send_records = _Lean.write
    _close_tcp = _Lean.loseConnection

    def __init__(
        self,
        sock: Any,
        protocol: IProtocol,
        client: tuple[Any, ...],
        server: Any,
        sessionno: int,
        reactor: Any,
        creator: Creator,
        clock: IReactorTime,
    ) -> None:
        # The creator calls serverConnectionForTLS(self): the certificate
        # files are looked at now, before the protocol hears of the
        # connection (the tracker tags it with the generation served), and
        # before the socket is registered with the reactor.
        try:
            self._tlsConnection: Connection | None = creator(self)
        except BaseException:
            sock.close()
            raise
        LeanServer.__init__(self, sock, protocol, client, server, sessionno, reactor)
        self._renewal_clock = clock
        #: The protocol, under the name Twisted's TLS layer gives it: the
        #: shared core delivers to it, and the mutual-TLS callback finds the
        #: tracker through the connection's app data this way.
        self.wrappedProtocol = protocol

    # -- what the application sees -------------------------------------------

    def getHandle(self) -> Connection | None:  # type: ignore[override]
        """The C{SSL.Connection} (as Twisted's TLS layer answers), C{None} once lost."""
        return self._tlsConnection

    def getPeerCertificate(self) -> Any:
        tls = self._tlsConnection
        return tls.get_peer_certificate() if tls is not None else None

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """The ALPN protocol, once negotiated (C{INegotiated})."""
        tls = self._tlsConnection
        if tls is None:
            return None
        return tls.get_alpn_proto_negotiated() or None

    def write(self, data: bytes) -> None:
        # Writes after loseConnection() are dropped, unless a producer is
        # still registered (it may write until it is unregistered).
        if self._tls_closing and self.producer is None:
            return
        self._encrypt(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """close_notify once the producer and held writes are gone; TCP after."""
        if self._tls_closing or not self.connected or self.disconnecting:
            return
        if not self._handshakeDone and not self._app_buffer:
            # OpenSSL would wait for the handshake before close_notify, and
            # nothing may be written any more: abort, as the stock layer does.
            self.abortConnection()
            return
        self._tls_closing = True
        if not self._app_buffer and self.producer is None:
            self._shutdownTLS()

    def loseWriteConnection(self) -> None:
        """Send close_notify and go on reading what the client sends."""
        if self.write_closed or self._tls_closing or self._lostTLSConnection:
            return
        if self.read_closed or self._app_buffer or not self._handshakeDone:
            # Nothing left to read, or writes wait on a read: close outright.
            self.loseConnection()
            return
        self.write_closed = True
        if self.producer is not None:
            self.unregisterProducer()
        self._shutdownTLS()

    def abortConnection(self) -> None:
        """Close at once; nothing more reaches the application."""
        self._aborted = True
        self._tls_closing = True
        tls = self._tlsConnection
        if tls is not None:
            # Marked as shut down, as the stock layer does (OpenSSL then keeps
            # a resumable session); the close_notify it writes is not sent
            # (the socket is reset).
            with contextlib.suppress(Error):
                tls.shutdown()
        tcp.Connection.abortConnection(self)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._lostTLSConnection:
            producer.stopProducing()
            return
        # A pull producer is driven as a push one, as Twisted's TLS layer
        # does: writes here go to the socket at once, so the TCP transport's
        # own pulls (when its buffer drains) would seldom come.
        pull = None if streaming else _PullToPush(producer, self)
        abstract.FileDescriptor.registerProducer(self, pull or producer, True)
        if pull is not None:
            pull.startStreaming()

    def unregisterProducer(self) -> None:
        producer = self.producer
        if producer is None:
            return
        if isinstance(producer, _PullToPush):
            producer.stopStreaming()
        abstract.FileDescriptor.unregisterProducer(self)
        if self._tls_closing and not self._app_buffer and not self._lostTLSConnection:
            self._shutdownTLS()

    def stopProducing(self) -> None:
        """
        What we produce for is gone (the backend closed): close, with
        close_notify. (Under Twisted's TLS layer this reached the TCP
        transport, which closed without one.) The wait for the client's
        answer is bounded as every close's is: the relay closes through the
        tracker right after, which aborts once the client has taken nothing
        for C{close_grace}, and C{max_lifetime} holds meanwhile.
        """
        self.loseConnection()

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        raise RuntimeError("this connection is TLS already")

    # -- reading -------------------------------------------------------------

    def doRead(self) -> Any:
        # _Lean.doRead and tcp.Connection.doRead in one frame, the protocol's
        # dataReceived replaced by the TLS layer's.
        if self.disconnecting:
            return None  # closing at the start of the next turn: read nothing
        if self._pause_pending:
            self.stopReading()
            return None
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as e:
            if e.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        if self.read_closed or self._lostTLSConnection:
            # After close_notify nothing may come, and after a TLS error
            # nothing is read: not kept, so it cannot grow the BIO.
            return None
        if len(data) > BURST:
            self._grown = True
        tls = self._tlsConnection
        assert tls is not None
        write_in(tls, data)
        finished = False
        if not self._handshakeDone:
            self._handshake()
            if not self._handshakeDone:
                return None
            finished = True
        if self._app_buffer:
            self._unbuffer()
        if finished and not mem_data(tls._into_ssl, NULL) and not tls.pending():
            # The client's last flight came alone: nothing to decrypt (a
            # recv() would only raise WantReadError to say so).
            self._flushSendBIO()
        else:
            self._flushReceiveBIO()
        if self._grown and self._handshakeDone:
            self._renew_bios()
        return None

    def _handshake(self) -> None:
        if self._aborted:
            return
        tls = self._tlsConnection
        assert tls is not None
        try:
            done = handshake(tls)
        except Error:
            self._tlsShutdownFinished(Failure())
            return
        if not done:
            self._flushSendBIO()
            return
        self._handshakeDone = True
        self._hold_tickets()
        protocol = self.protocol
        if IHandshakeListener.providedBy(protocol):
            protocol.handshakeCompleted()

    def readConnectionLost(self, reason: Failure) -> None:
        """The client's FIN: whatever it sent before is read, then its stream ends."""
        # What the protocol raises ends the connection, as Twisted's TCP
        # transport does with its protocol's readConnectionLost.
        try:
            self._client_fin()
        except BaseException:
            log.err()
            self.connectionLost(Failure())

    # -- writing -------------------------------------------------------------

    def _bufferedWrite(self, data: bytes) -> None:
        self._app_buffer = [*self._app_buffer, data]
        producer: Any = self.producer
        if producer is not None and producer is not self._held_producer:
            producer.pauseProducing()
            self._held_producer = producer

    def _unbuffer(self) -> None:
        """The handshake completed: the writes held for it go now."""
        pending, self._app_buffer = self._app_buffer, ()
        for data in pending:
            # Written before any loseConnection(): not dropped by it.
            self._encrypt(data)
        if self._app_buffer:
            return
        producer: Any = self.producer
        held, self._held_producer = self._held_producer, None
        if producer is not None:
            if producer is held and not self.producerPaused:
                producer.resumeProducing()
            return
        if self._tls_closing:
            self._shutdownTLS()

    # -- ending --------------------------------------------------------------

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        """
        The TLS layer is done: send what OpenSSL wrote (an alert says why a
        handshake failed), then close TCP; C{reason} (if any) is what the
        application hears.
        """
        if reason is not None:
            if isinstance(reason.value, ZeroReturnError):
                # close_notify in the middle of the handshake: a client that
                # leaves, not a TLS fault.
                reason = Failure(ConnectionDone("close_notify in the handshake"))
            elif isinstance(reason.value, Error) and _representsEOF(reason.value):
                reason = Failure(ConnectionLost())
        if self._tls_reason is None:
            self._tls_reason = reason
        self._lostTLSConnection = True
        self._flushSendBIO()
        producer = self.producer
        if producer is not None:
            # Nothing the producer writes can be sent now: without it, the
            # TCP close does not wait for it. A pull producer is stopped (its
            # wrapper's task would pull on a connection that is gone); a push
            # producer is let go (see the module's differences).
            abstract.FileDescriptor.unregisterProducer(self)
            if isinstance(producer, _PullToPush):
                producer.stopProducing()
        self._close_tcp()

    def connectionLost(self, reason: Failure) -> None:
        if "protocol" not in self.__dict__:
            return  # reported once already
        self._ending = True  # from now on nothing is sent
        self._cancel_renewal()
        tls = self._tlsConnection
        try:
            if not self._lostTLSConnection and tls is not None:
                # Whatever the client sent last, and OpenSSL has, goes up
                # first (as Twisted's TLS layer does).
                tls.bio_shutdown()
                self._flushReceiveBIO()
        finally:
            # Even if the protocol raised just now: the socket is closed and
            # the protocol told, once.
            self._lostTLSConnection = True
            reason = self._tls_reason or reason
            self._tls_reason = None
            LeanServer.connectionLost(self, reason)
            if tls is not None:
                tls.set_app_data(None)  # no cycle left through OpenSSL's object
            self._tlsConnection = None
            # Nor through the protocol, which keeps its transport, or a
            # producer paused for the handshake.
            self.wrappedProtocol = None
            if self._held_producer is not None:
                self._held_producer = None


HALF_CLOSING.add(LeanTLSServer)  # see tlsgate._tcp
