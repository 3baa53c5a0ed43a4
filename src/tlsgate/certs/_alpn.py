"""
ALPN selection that refuses a client with no protocol in common.

RFC 7301 section 3.2: a server that supports none of the client's protocols
answers with the fatal C{no_application_protocol} alert. pyOpenSSL's
callback can only decline (the handshake then completes with no protocol,
and an HTTP/2 client talks to an HTTP/1.1 backend), so the callback is
installed through the cffi binding pyOpenSSL itself uses, returning
OpenSSL's C{SSL_TLSEXT_ERR_ALERT_FATAL}, which sends that alert.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from twisted.logger import Logger

_log = Logger()

_SIGNATURE = (
    "int (*)(SSL *, unsigned char **, unsigned char *, unsigned char *,"
    " unsigned int, void *)"
)


def choose(offered: tuple[bytes, ...], wire: bytes) -> int | None:
    """
    Where, in the client's length-prefixed protocol list C{wire}, the first
    of C{offered} (the server's order) starts, or C{None} if none is there or
    the list is malformed.
    """
    starts: dict[bytes, int] = {}
    i = 0
    while i < len(wire):
        n = wire[i]
        if n == 0 or i + 1 + n > len(wire):
            return None
        starts.setdefault(wire[i + 1 : i + 1 + n], i + 1)
        i += 1 + n
    for protocol in offered:
        if protocol in starts:
            return starts[protocol]
    return None


def install_alpn(ctx: SSL.Context, protocols: tuple[str, ...]) -> None:
    """Make C{ctx} select from C{protocols} (server's order) or refuse by alert."""
    offered = tuple(p.encode("ascii") for p in protocols)
    ok = int(lib.SSL_TLSEXT_ERR_OK)
    fatal = int(lib.SSL_TLSEXT_ERR_ALERT_FATAL)

    def select(ssl: Any, out: Any, outlen: Any, in_: Any, inlen: int, arg: Any) -> int:
        try:
            start = choose(offered, ffi.buffer(in_, inlen)[:])
            if start is None:
                return fatal  # no_application_protocol
            # The selection points into the client's list, which OpenSSL
            # keeps for the handshake: nothing here must outlive the call.
            out[0] = in_ + start
            outlen[0] = in_[start - 1]
            return ok
        except Exception:
            _log.failure("ALPN callback failed")
            return fatal

    callback = ffi.callback(_SIGNATURE, select)
    ctx._tlsgate_alpn = callback  # type: ignore[attr-defined]  # keep it alive
    lib.SSL_CTX_set_alpn_select_cb(ctx._context, callback, ffi.NULL)
