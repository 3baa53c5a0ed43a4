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
"""

from __future__ import annotations

from typing import Any

#: What L{pending} answers when it cannot tell.
UNKNOWN = 1 << 30

#: The BIO that holds what the peer sent, not yet read by OpenSSL.
INTO = "_into_ssl"
#: The BIO that holds what OpenSSL wrote, not yet sent.
FROM = "_from_ssl"

try:
    from OpenSSL.SSL import _ffi, _lib  # type: ignore[attr-defined]

    _mem_data = _lib.BIO_get_mem_data
    _bio_new = _lib.BIO_new
    _bio_s_mem = _lib.BIO_s_mem
    _set_bio = _lib.SSL_set_bio
    _bio_free = _lib.BIO_free
    _null = _ffi.NULL
    AVAILABLE = True
except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
    AVAILABLE = False

    def _mem_data(bio: Any, null: Any) -> int:
        return UNKNOWN

    _null = None

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
