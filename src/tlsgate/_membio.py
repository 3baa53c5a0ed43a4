"""
The two memory BIOs under a pyOpenSSL connection: how full they are, and
fresh ones once a burst has passed.

OpenSSL's memory BIO never gives back the buffer it grew to. Twisted's TLS
layer writes every socket read (up to 64 KiB) into one BIO and reads every
encrypted write out of the other, so after a burst an idle connection keeps
both grown buffers for as long as it lives: about 150 KiB after 64 KiB each
way, about 1.7 KiB after the handshake alone (measured with OpenSSL 4.0.3).
L{renew} swaps a drained BIO for a fresh one, which costs an allocation and
a free, far less than the burst that grew it.

The stock layer also learns that a BIO is empty from an exception (a
C{bio_read} or C{recv} raising C{WantReadError}), several times per
connection; L{pending} asks the BIO instead.

pyOpenSSL has no public call for either: this uses its binding's
C{BIO_get_mem_data}, C{BIO_new}, C{BIO_s_mem} and C{SSL_set_bio}, and the
connection's private C{_ssl}, C{_into_ssl} and C{_from_ssl}. L{AVAILABLE}
says whether they are there; without them L{pending} answers "unknown" (a
large number: callers then read until OpenSSL says there is nothing, as the
stock layer does) and L{renew} does nothing.

L{write_in}, L{read_out}, L{recv} and L{send} are pyOpenSSL's C{bio_write},
C{bio_read}, C{recv} and C{send} for the gateway's TLS transport, which
calls them a few times per connection: one Python call each instead of two
(pyOpenSSL checks its callbacks' errors after every call, also when the call
succeeded; only a handshake runs callbacks, renegotiation being off), and a
failure raises what pyOpenSSL raises, through its own error handling
(L{DIRECT} says whether they can).
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Connection as _Connection
from OpenSSL.SSL import WantReadError

#: What L{pending} answers when it cannot tell.
UNKNOWN = 1 << 30

#: One C{recv} takes up to this many decrypted bytes: several full records.
READ_SIZE = 2**16

#: One C{bio_read} takes up to this many encrypted bytes: a relay write
#: (up to one backend read, 64 KiB) goes out as one socket write.
SEND_SIZE = 2**17

#: A BIO that held more than this many bytes is renewed once drained: the
#: first time right after the handshake, after that L{RENEW_AFTER} seconds
#: after the burst, so that a bulk transfer does not regrow fresh BIOs for
#: every chunk.
BURST = 4096

#: Seconds after a burst (past the handshake) before the BIOs are renewed.
RENEW_AFTER = 1.0

#: The BIO that holds what the peer sent, not yet read by OpenSSL.
INTO = "_into_ssl"
#: The BIO that holds what OpenSSL wrote, not yet sent.
FROM = "_from_ssl"

try:
    from OpenSSL._util import no_zero_allocator as _alloc
    from OpenSSL.SSL import _ffi, _lib  # type: ignore[attr-defined]

    _mem_data = _lib.BIO_get_mem_data
    _bio_new = _lib.BIO_new
    _bio_s_mem = _lib.BIO_s_mem
    _set_bio = _lib.SSL_set_bio
    _bio_free = _lib.BIO_free
    _bio_read = _lib.BIO_read
    _bio_write = _lib.BIO_write
    _ssl_read = _lib.SSL_read
    _ssl_write = _lib.SSL_write
    _buffer = _ffi.buffer
    _from_buffer = _ffi.from_buffer
    _null = _ffi.NULL
    AVAILABLE = True
except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
    AVAILABLE = False

    def _mem_data(bio: Any, null: Any) -> int:
        return UNKNOWN

    _null = None


#: Whether L{write_in}, L{read_out}, L{recv} and L{send} call OpenSSL
#: directly: they need the binding and pyOpenSSL's own error handling, so
#: that a failed call raises what pyOpenSSL raises. Otherwise they are
#: pyOpenSSL's methods (and the BIOs are still renewed, with L{AVAILABLE}).
DIRECT = (
    AVAILABLE
    and hasattr(_Connection, "_raise_ssl_error")
    and hasattr(_Connection, "_handle_bio_errors")
)

#: C{mem_data(connection._from_ssl, NULL)}: L{pending}'s answer for L{FROM}
#: without a Python call of its own, for the TLS layer's flush, which asks
#: about a dozen times per connection (a call of L{pending} costs about 1,500
#: instructions: 0.7% of a relayed connection in all). C{_from_ssl} is the
#: BIO pyOpenSSL's own C{bio_read} reads, so a connection whose bytes the
#: layer reads has it; without the binding this answers L{UNKNOWN}.
mem_data = _mem_data
NULL = _null


def pending(connection: Any, which: str) -> int:
    """The bytes held in C{connection}'s BIO C{which} (L{INTO} or L{FROM})."""
    bio = getattr(connection, which, None)
    if bio is None or not AVAILABLE:
        return UNKNOWN
    return int(_mem_data(bio, _null))


def renew(connection: Any) -> bool:
    """
    Give C{connection} two fresh, empty BIOs in place of its drained ones
    (OpenSSL frees the old ones). Nothing is done if either holds bytes, or
    if pyOpenSSL's internals are not as expected.

    Both are replaced together: C{SSL_set_bio} with one of two distinct BIOs
    unchanged would take a reference to it that it does not own.

    @return: whether they were renewed.
    """
    if not AVAILABLE:
        return False
    ssl = getattr(connection, "_ssl", None)
    into = getattr(connection, INTO, None)
    out = getattr(connection, FROM, None)
    if ssl is None or into is None or out is None:
        return False
    if _mem_data(into, _null) or _mem_data(out, _null):
        return False
    fresh_into = _bio_new(_bio_s_mem())
    if fresh_into == _null:
        return False
    fresh_out = _bio_new(_bio_s_mem())
    if fresh_out == _null:
        _bio_free(fresh_into)
        return False
    _set_bio(ssl, fresh_into, fresh_out)
    setattr(connection, INTO, fresh_into)
    setattr(connection, FROM, fresh_out)
    return True


def write_in(connection: Any, data: bytes) -> None:
    """C{connection.bio_write(data)}: what the peer sent, for OpenSSL to read."""
    if not DIRECT:
        connection.bio_write(data)
        return
    into = connection._into_ssl
    result = _bio_write(into, _from_buffer(data), len(data))
    if result <= 0:
        connection._handle_bio_errors(into, result)


def read_out(connection: Any, size: int) -> bytes:
    """
    C{connection.bio_read(size)}: what OpenSSL wrote for the peer (C{size}:
    at most what L{pending} said is there, so it does not fail for want of
    bytes).
    """
    if not DIRECT:
        return bytes(connection.bio_read(size))
    out = connection._from_ssl
    buf = _alloc("char[]", size)
    result = _bio_read(out, buf, size)
    if result <= 0:
        connection._handle_bio_errors(out, result)
    data: bytes = _buffer(buf, result)[:]
    return data


def recv(connection: Any, size: int) -> bytes:
    """
    C{connection.recv(size)}, after the handshake: decrypted bytes, or the
    exception pyOpenSSL raises (C{WantReadError}, C{ZeroReturnError}...).
    """
    if not DIRECT:
        return bytes(connection.recv(size))
    ssl = connection._ssl
    buf = _alloc("char[]", size)
    result = _ssl_read(ssl, buf, size)
    if result <= 0:
        connection._raise_ssl_error(ssl, result)
    data: bytes = _buffer(buf, result)[:]
    return data


def send(connection: Any, data: Any) -> int:
    """C{connection.send(data)}, after the handshake: how much OpenSSL took."""
    if not DIRECT:
        return int(connection.send(data))
    ssl = connection._ssl
    result = _ssl_write(ssl, _from_buffer(data), len(data))
    if result <= 0:
        connection._raise_ssl_error(ssl, result)
    return int(result)


class BIOUpkeep:
    """
    What both of tlsgate's TLS server sides do with the BIOs of their
    C{_tlsConnection}: Twisted's layer as L{tlsgate._halfclose} changes it
    (the embeddable one) and the gateway's own transport
    (L{tlsgate._leantls}). They send all that OpenSSL wrote in as few
    writes as they can, keep a TLS 1.3 server's session tickets for the
    first answer, and renew the BIOs once a burst has passed.

    A class using it provides C{_send_records(data)} (where OpenSSL's output
    goes), C{_renewal_clock} (an C{IReactorTime}), C{_tlsConnection} and
    C{_lostTLSConnection} (Twisted's names), and sets the flags below.

    @ivar read_closed: the client finished sending (close_notify or FIN).
    @ivar write_closed: our close_notify went out while reading goes on.
    """

    _tlsConnection: Any
    _lostTLSConnection: bool
    _renewal_clock: Any

    read_closed = False
    write_closed = False
    #: The client's FIN was seen.
    _fin = False
    #: connectionLost is under way: nothing more is sent, and a close_notify
    #: read now ends the connection instead of half-closing it.
    _ending = False
    #: A BIO grew past BURST since the last renewal (the handshake counts).
    _grown = True
    #: The BIOs were renewed after the handshake.
    _settled = False
    #: The delayed renewal after a later burst, while one is due.
    _renewal: Any = None
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
        if AVAILABLE and tls.get_protocol_version_name() == "TLSv1.3":
            held = pending(tls, FROM)
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
        """Give back what the BIOs grew to (see the module)."""
        if (
            self._fin
            or self.read_closed
            or self.write_closed
            or self._lostTLSConnection
            or self._renewal is not None
        ):
            return  # an input BIO at EOF must stay; or a renewal is due
        if not self._settled:
            if renew(self._tlsConnection):
                self._settled = True
                self._grown = False
            return
        self._renewal = self._renewal_clock.callLater(RENEW_AFTER, self._renew_later)

    def _renew_later(self) -> None:
        self._renewal = None
        if (
            self._lostTLSConnection
            or self._fin
            or self.read_closed
            or self.write_closed
        ):
            return  # gone, or an input BIO at EOF that must stay
        if renew(self._tlsConnection):
            self._grown = False
        else:
            self._renew_bios()  # bytes in flight: try again later

    def _cancel_renewal(self) -> None:
        """The connection ends: no renewal is due any more."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None and renewal.active():
            renewal.cancel()
