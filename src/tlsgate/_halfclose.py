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
dropped unread, so they cannot grow the memory BIO. The memory BIOs are
renewed within half a second of the handshake and of any later burst, once
drained, so that an idle connection does not keep the buffers its busiest
moment grew them to (L{tlsgate._membio}, L{tlsgate._tlscore.Renewals}). A
wrapped protocol
without C{IHalfCloseableProtocol} gets the stock behaviour. Everything
else (handshake, producers, aborts, reasons) is the stock layer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from OpenSSL.SSL import ZeroReturnError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from tlsgate._declarations import once_per_kind
from tlsgate._membio import BURST
from tlsgate._tlscore import TLSServerCore

if TYPE_CHECKING:
    from tlsgate._leantls import LeanTLS


def can_half_close(transport: object) -> bool:
    """
    Whether C{transport} can end its sending side alone: TCP (a FIN) and this
    layer (close_notify) can; Twisted's stock TLS layer cannot (a bare FIN
    under TLS would be a truncation), so there the only end is a full close.
    """
    return not isinstance(transport, TLSMemoryBIOProtocol) or isinstance(
        transport, HalfCloseTLSProtocol
    )


def _stock_declaration(protocol: TLSMemoryBIOProtocol, provided: Any) -> object:
    """What Twisted's TLS layer declares over a transport providing C{provided}."""
    for interface in provided:
        directlyProvides(protocol, interface)
    return protocol.__dict__.get("__provides__")


@implementer(IHalfCloseableProtocol)
class HalfCloseTLSProtocol(TLSServerCore, TLSMemoryBIOProtocol):
    """
    C{TLSMemoryBIOProtocol} with half-close both ways (see the module;
    L{TLSServerCore} has the half-close flags, C{read_closed} and
    C{write_closed}).
    """

    def _send_records(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def _close_tcp(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    @property
    def _tls_closing(self) -> bool:  # type: ignore[override]
        # Twisted's layer keeps the application's close in its own flag.
        return bool(self.disconnecting)

    @property
    def _renewal_clock(self) -> Any:
        # The factory's clock: the one Twisted's TLS factory keeps (its
        # argument, or the reactor).
        return self.factory._clock

    def makeConnection(self, transport: Any) -> None:
        # The stock method, except its loop of directlyProvides over the
        # transport's interfaces (about 7% of the samples under handshake
        # load) runs once per kind of transport, not per connection.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        provided = providedBy(transport)
        declared = once_per_kind(
            (type(self), provided), _stock_declaration, self, provided
        )
        if declared is not None:
            self.__provides__ = declared
        Protocol.makeConnection(self, transport)
        # Not registered with the factory: nothing reads its WeakKeyDictionary
        # of protocols (the tracker keeps the connections), and each entry
        # costs an idle connection about 125 bytes (see unregisterProtocol).
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        # A server has nothing to say before the ClientHello: the stock
        # layer's do_handshake() here would only raise WantReadError.
        if getattr(self.factory, "is_client", True):
            self._checkHandshakeStatus()

    def dataReceived(self, data: bytes) -> None:
        if self.read_closed:
            return  # after close_notify nothing may come; not kept, not read
        if len(data) > BURST:
            self._grown = True
        super().dataReceived(data)
        if self._grown and self._handshakeDone:
            self._renew_bios()

    # -- writing: all of a write's records in one socket write ---------------

    def _checkHandshakeStatus(self) -> None:
        done = self._handshakeDone
        super()._checkHandshakeStatus()
        if (
            not done
            and self._handshakeDone
            and not self._lostTLSConnection
            and not getattr(self.factory, "is_client", True)
        ):
            self._hold_tickets()  # a server's TLS 1.3 tickets, for the first answer

    def _write(self, data: bytes) -> None:
        # The stock loop flushes the BIO after each 16 KiB record (a socket
        # write each); here OpenSSL is handed the whole write and the records
        # leave together. Twisted's BufferingTLSTransport is not used: the
        # relay writes whole backend reads, so its aggregation would only add
        # a callLater per write.
        self._encrypt(data)

    # -- IHalfCloseableProtocol, for the TCP transport underneath ----------

    def readConnectionLost(self) -> None:
        """The client's FIN (see L{TLSServerCore._client_fin})."""
        self._client_fin()

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
        self._cancel_renewal()
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
        #: Set by L{tlsgate._assembly.tls_over}: a L{tlsgate._tcp.LeanPort}
        #: (the gateway's own listeners) then accepts each connection as one
        #: object doing TCP and TLS (L{tlsgate._leantls}) instead of building
        #: this layer; any other port ignores it.
        self.lean_tls: LeanTLS | None = None

    def unregisterProtocol(self, p: Any) -> None:
        # Protocols are not registered (see HalfCloseTLSProtocol.makeConnection).
        self.protocols.pop(p, None)
