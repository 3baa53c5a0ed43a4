"""
The epoll reactor's event loop without a logging context per event.

C{EPollReactor.doPoll} runs every read and write event under
C{log.callWithLogger}: it asks the transport for its log prefix, copies the
context dictionary, pushes and pops it, four Python frames deep, so that a
legacy C{log.msg} from inside the handler is tagged with the connection. A
relayed connection has about six events; tlsgate logs with
C{twisted.logger} namespaces, which do not use that context. L{lean_dispatch}
gives one reactor a C{doPoll} that calls the event handler directly and
still logs what escapes it, as C{callWithLogger} did.

It is applied to the gateway's own reactor (L{tlsgate._gateway}) only, and
only to Twisted's C{EPollReactor} itself; any other reactor is left alone.
"""

from __future__ import annotations

import errno
from types import MethodType
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log


def _do_poll(self: Any, timeout: float | None) -> None:
    """C{EPollReactor.doPoll}, with the handler called directly."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            # No repr of the selectable: after connectionLost it may not
            # have what its repr reads.
            log.err(None, f"Unhandled error in a {type(selectable).__name__}")


def lean_dispatch(reactor: object) -> bool:
    """
    Give C{reactor} the direct C{doPoll}, if it is an C{EPollReactor}.

    @return: whether it was applied (or had been already).
    """
    if type(reactor) is not EPollReactor:
        return False
    poll = MethodType(_do_poll, reactor)
    reactor.doPoll = poll  # type: ignore[method-assign]
    reactor.doIteration = poll  # type: ignore[method-assign]
    return True
