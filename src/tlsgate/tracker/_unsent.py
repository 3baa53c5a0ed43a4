"""
How much of what was written to a connection its peer has not taken yet.

After the application closes a connection (the relay, when its backend
went), the client still has to read what was written: what the transport
holds, then what the kernel's send queue holds, which on a slow link can be
megabytes. The tracker's abort after C{close_grace} asks this between looks,
so that a client that is still reading is not cut off (an abort's reset
throws away the kernel's queue), while one that reads nothing is.
"""

from __future__ import annotations

import struct
from typing import Any

try:
    import fcntl
    import termios
except ImportError:  # not a POSIX system: the transport's buffer alone
    fcntl = None  # type: ignore[assignment]

#: The ioctl for the bytes in a socket's send queue not yet taken by the
#: peer (SIOCOUTQ on Linux, the same number as TIOCOUTQ). On a UNIX socket,
#: Linux counts the memory the queued writes hold, headers included, and
#: frees a write's share once it is read whole: less exact, and as good for
#: telling whether the peer takes anything.
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if fcntl is not None else None
_INT = struct.Struct("i")


def unsent_bytes(transport: Any) -> int | None:
    """
    The bytes written to C{transport} that its peer has not taken: in the
    transport's buffer and in its socket's send queue.

    @param transport: a TCP transport of Twisted's or tlsgate's, or a TLS
        layer over one (Twisted's C{TLSMemoryBIOProtocol}: its records are
        in the TCP transport's buffer once written).
    @return: C{None} where it cannot tell: no socket under it (a test's
        transport, a pipe), or one already closed.
    """
    tcp = transport
    if not hasattr(tcp, "dataBuffer"):
        tcp = getattr(transport, "transport", None)
        if tcp is None or not hasattr(tcp, "dataBuffer"):
            return None
    try:
        held = len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        fd = tcp.socket.fileno()
    except (AttributeError, OSError, TypeError):
        return None
    if fd < 0:
        return None
    if _OUTQ is None:
        return int(held)
    try:
        queued = _INT.unpack(fcntl.ioctl(fd, _OUTQ, bytes(_INT.size)))[0]
    except OSError:
        # Not a socket that reports it (another system): what the transport
        # holds is all that can be seen.
        queued = 0
    return int(held) + int(queued)
