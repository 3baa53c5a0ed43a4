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
(L{DIRECT} says whether they can). L{handshake} is C{do_handshake} that
answers "not yet" with C{False} where pyOpenSSL raises C{WantReadError}: a
server's handshake waits for its client at least once, and an exception
raised and caught costs more than the rest of the call.
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

#: A BIO that held more than this many bytes is renewed once drained, within
#: L{RENEW_AFTER} seconds (the handshake counts as such a burst).
BURST = 4096

#: Seconds, at most, from a burst to the renewal of its BIOs: the period of
#: the sweep that renews them (L{tlsgate._tlscore.Renewals}), so that a bulk
#: transfer does not regrow fresh BIOs for every chunk, and a connection
#: that ends within it costs no renewal.
RENEW_AFTER = 0.5

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
    _do_handshake = _lib.SSL_do_handshake
    _get_error = _lib.SSL_get_error
    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    _ZERO_RETURN = _lib.SSL_ERROR_ZERO_RETURN
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


def handshake(connection: Any) -> bool:
    """
    C{connection.do_handshake()}: C{True} once the handshake is complete,
    C{False} while OpenSSL waits for more from the peer (what it wrote for
    the peer meanwhile is in L{FROM}). Any other outcome raises what
    pyOpenSSL raises, an error a callback raised during the call first.
    """
    if not DIRECT:
        try:
            connection.do_handshake()
        except WantReadError:
            return False
        return True
    ssl = connection._ssl
    result = _do_handshake(ssl)
    if _callbacks_fine(connection._context):
        if result == 1:
            return True
        if result <= 0 and _get_error(ssl, result) == _WANT_READ:
            return False
    connection._raise_ssl_error(ssl, result)  # raises, or returns on success
    return True


def _callbacks_fine(context: Any) -> bool:
    """No callback of C{context} (verify, ALPN, OCSP) has an error to raise."""
    # Spelt out, not a loop over a tuple: it runs a few times per connection.
    helper = context._verify_helper
    if helper is not None and getattr(helper, "_problems", True):
        return False
    helper = context._alpn_select_helper
    if helper is not None and getattr(helper, "_problems", True):
        return False
    helper = context._ocsp_helper
    return helper is None or not getattr(helper, "_problems", True)


def recv(connection: Any, size: int) -> bytes:
    """
    C{connection.recv(size)}, after the handshake: decrypted bytes, or the
    exception pyOpenSSL raises (C{WantReadError}, C{ZeroReturnError}...).
    The peer's close_notify may also be told by C{b""} (directly, where
    pyOpenSSL would raise C{ZeroReturnError}: once per connection that
    closes cleanly); callers take either.
    """
    if not DIRECT:
        return bytes(connection.recv(size))
    ssl = connection._ssl
    buf = _alloc("char[]", size)
    result = _ssl_read(ssl, buf, size)
    if result <= 0:
        if _get_error(ssl, result) == _ZERO_RETURN and _callbacks_fine(
            connection._context
        ):
            return b""
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
