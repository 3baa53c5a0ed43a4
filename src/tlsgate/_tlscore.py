"""
What both of tlsgate's TLS server sides share: Twisted's layer as
L{tlsgate._halfclose} changes it (the embeddable one) and the gateway's own
transport, TCP and TLS in one object (L{tlsgate._leantls}).

Both speak TLS over a pyOpenSSL connection with memory BIOs, under Twisted's
names for its state (C{_tlsConnection}, C{_lostTLSConnection},
C{_handshakeDone}, C{_aborted}, C{wrappedProtocol}) and methods
(C{_bufferedWrite}, C{_tlsShutdownFinished}). L{TLSServerCore} holds what
they do alike, written once:

  - a write leaves as all the records OpenSSL makes of it, in as few socket
    writes as they take (L{_encrypt}, L{_flushSendBIO});
  - what OpenSSL decrypts goes to the protocol, without a last C{recv()}
    that would only raise to say nothing is left (L{_flushReceiveBIO});
  - half-close both ways: the client's close_notify or FIN is the
    protocol's C{readConnectionLost()} (L{_peer_finished}, L{_client_fin});
  - a TLS 1.3 server's session tickets wait for the first answer, and the
    memory BIOs are renewed once a burst has passed (L{tlsgate._membio}),
    by one sweep per clock for all connections (L{Renewals}).

A class using it says where records go (C{_send_records}), how its TCP
connection closes (C{_close_tcp}), whether the application asked to close
(C{_tls_closing}) and which clock renews the BIOs (C{_renewal_clock}).
"""

from __future__ import annotations

from operator import methodcaller
from typing import TYPE_CHECKING, Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure

from tlsgate import _membio
from tlsgate._batch import Batch, per_clock
from tlsgate._membio import (
    BURST,
    NULL,
    READ_SIZE,
    RENEW_AFTER,
    SEND_SIZE,
    UNKNOWN,
    mem_data,
    pending,
    read_out,
    recv,
    renew,
    send,
)


class Renewals(Batch["TLSServerCore"]):
    """
    The connections of one clock whose memory BIOs are due to be renewed:
    all of them together, L{RENEW_AFTER} seconds after the first was added,
    by one delayed call. So a burst's buffers go back within that time, the
    BIOs of a bulk transfer are renewed at most once per period, and a
    connection that ends first costs no renewal: a renewal made as soon as
    each handshake completed, as before, cost a relayed connection about 1%
    of its instructions (C{bench/instructions.py}).
    """

    def __init__(self, clock: Any) -> None:
        super().__init__(
            clock, RENEW_AFTER, methodcaller("_renew_due"), "renewing the BIOs of"
        )


#: clock -> its renewals.
_RENEWALS: dict[Any, Renewals] = {}


def renewals(clock: Any) -> Renewals:
    """The L{Renewals} of C{clock}."""
    return per_clock(_RENEWALS, clock, Renewals, clock)


class TLSServerCore:
    """
    The shared part of a TLS server side (see the module).

    @ivar read_closed: the client finished sending (close_notify or FIN).
    @ivar write_closed: our close_notify went out while reading goes on.
    """

    _tlsConnection: Any
    _lostTLSConnection: bool
    _handshakeDone: bool
    _aborted: bool
    _renewal_clock: Any
    _tls_closing: bool
    wrappedProtocol: Any

    read_closed = False
    write_closed = False
    #: The client's FIN was seen.
    _fin = False
    #: connectionLost is under way: nothing more is sent, and a close_notify
    #: read now ends the connection instead of half-closing it.
    _ending = False
    #: A BIO grew past BURST since the last renewal (the handshake counts).
    _grown = True
    #: The connection waits in its clock's L{Renewals}.
    _due = False
    #: Bytes OpenSSL wrote as a TLS 1.3 handshake completed (session
    #: tickets), held back to leave with the next write.
    _held = 0

    def _send_records(self, data: bytes) -> None:
        raise NotImplementedError

    def _hold_tickets(self) -> None:
        """
        The handshake just completed. A TLS 1.3 server's last handshake
        output is its session tickets, which no client waits for: they leave
        with the first answer (one send, not two). TLS 1.2's last flight (its
        Finished) is waited for, and is never held.
        """
        tls = self._tlsConnection
        if _membio.AVAILABLE and tls.get_protocol_version_name() == "TLSv1.3":
            held = pending(tls, _membio.FROM)
            # UNKNOWN (pyOpenSSL's internals not as expected) would hold
            # everything after it: then nothing is held.
            self._held = held if 0 < held < UNKNOWN else 0

    def _flushSendBIO(self) -> None:
        """What OpenSSL wrote, to the peer: all of it in one write when it can."""
        tls = self._tlsConnection
        if tls is None or self._ending:
            return  # the connection is going: what OpenSSL wrote is not sent
        # The BIO pyOpenSSL's own bio_read reads (see mem_data).
        waiting = mem_data(tls._from_ssl, NULL)
        if self._held:
            if waiting <= self._held:
                return  # only the tickets: they wait for the next write
            self._held = 0  # more came (an alert, close_notify): all go now
        if waiting > BURST:
            self._grown = True
        while waiting:
            try:
                data = read_out(tls, min(waiting, SEND_SIZE))
            except WantReadError:
                return
            self._send_records(data)
            waiting -= len(data)
            if waiting <= 0:
                waiting = mem_data(tls._from_ssl, NULL)

    def _renew_bios(self) -> None:
        """
        Give back what the BIOs grew to (see the module) at the clock's next
        sweep of renewals: a connection that ends before then (most relayed
        connections) costs a dictionary entry, not a renewal.
        """
        if (
            self._due
            or self._held
            or self._ending
            or self._fin
            or self.read_closed
            or self.write_closed
            or self._lostTLSConnection
        ):
            # Due already; or TLS 1.3 tickets wait in the output BIO (the
            # write that sends them asks again); or the connection is going;
            # or an input BIO at EOF, which must stay.
            return
        self._due = True
        renewals(self._renewal_clock).add(self)

    def _renew_due(self) -> None:
        """The sweep of renewals: renew now, if the BIOs are drained."""
        self._due = False
        if (
            self._lostTLSConnection
            or self._fin
            or self.read_closed
            or self.write_closed
        ):
            return  # gone, or an input BIO at EOF that must stay
        if renew(self._tlsConnection):
            self._grown = False
        # Otherwise part of a record is in the input BIO: the read that
        # brings the rest asks again (_grown stays set), rather than a
        # retry at every sweep while the client is idle.

    def _cancel_renewal(self) -> None:
        """The connection ends: no renewal is due any more."""
        if self._due:
            self._due = False
            renewals(self._renewal_clock).discard(self)

    def _close_tcp(self) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:
        # Twisted's TLS layer has these, and the gateway's transport its own:
        # not defined here, where they would come first in either's order.

        def _bufferedWrite(self, data: bytes) -> None: ...

        def _tlsShutdownFinished(self, reason: Failure | None) -> None: ...

    # -- writing -------------------------------------------------------------

    def _encrypt(self, data: bytes) -> None:
        """
        Hand C{data} to OpenSSL whole and send the records it makes together
        (Twisted's stock loop sends each 16 KiB record by itself).
        """
        if self._lostTLSConnection or self._aborted:
            return
        self._held = 0  # held tickets go first, in the same send
        tls = self._tlsConnection
        view = memoryview(data)
        while view:
            try:
                sent = send(tls, view)
            except WantReadError:
                # Before the handshake completed: held until it has.
                self._flushSendBIO()
                self._bufferedWrite(view.tobytes())
                return
            except Error:
                self._tlsShutdownFinished(Failure())
                return
            view = view[sent:]
        self._flushSendBIO()
        if self._grown and self._handshakeDone:
            self._renew_bios()

    def _shutdownTLS(self) -> None:
        """Send close_notify (or answer the client's); TCP closes once both are."""
        tls = self._tlsConnection
        if tls is None:
            return
        try:
            done = tls.shutdown()
        except Error:
            # In the middle of the handshake OpenSSL may want to read first.
            done = False
        self._flushSendBIO()
        if done:
            self._close_tcp()

    # -- reading -------------------------------------------------------------

    def _flushReceiveBIO(self) -> None:
        """What OpenSSL can decrypt now, to the protocol; then what it wrote."""
        tls = self._tlsConnection
        while not self._lostTLSConnection and not self.read_closed:
            try:
                data = recv(tls, READ_SIZE)
            except WantReadError:
                break
            except ZeroReturnError:
                self._peer_finished()
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not data:  # close_notify, as recv() may also say it
                    self._peer_finished()
                    continue
                if not self._aborted:
                    self.wrappedProtocol.dataReceived(data)
                # No last recv() to learn that nothing is left (an exception
                # each time) when neither OpenSSL nor its BIO holds more.
                if not tls.pending() and not mem_data(tls._into_ssl, NULL):
                    break
        self._flushSendBIO()

    def _peer_finished(self) -> None:
        """The client's stream ended cleanly: half-close, or end."""
        self.read_closed = True
        if self.write_closed:
            # Our close_notify went out already: both directions are done,
            # and no second alert is owed.
            self._tlsShutdownFinished(None)
            return
        protocol = self.wrappedProtocol
        if (
            self._ending
            or self._tls_closing
            or not IHalfCloseableProtocol.providedBy(protocol)
        ):
            # Both directions are done (or half-close is not wanted): reply
            # close_notify and close.
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
            return
        protocol.readConnectionLost()

    def _client_fin(self) -> None:
        """The client's FIN: whatever it sent before is read, then its stream ends."""
        if self._fin or self._lostTLSConnection:
            return
        self._fin = True
        if not self._handshakeDone:
            # Nothing was relayed yet: end the connection.
            self._close_tcp()
            return
        if self.read_closed:
            if self.write_closed:
                self._close_tcp()
            return
        self._tlsConnection.bio_shutdown()
        self._flushReceiveBIO()
        if not self.read_closed and not self._lostTLSConnection:
            # A FIN without close_notify (SSL_OP_IGNORE_UNEXPECTED_EOF makes
            # OpenSSL report it as a clean end): the same half-close.
            self._peer_finished()
