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

It also numbers the batches of events it takes from epoll (L{POLLS}, an
attribute of the reactor): an event is handled later in the batch it came
in, by when an earlier handler may have closed its descriptor and a new
socket may have the same number. A selectable that records the batch it was
made in (L{MADE_IN}: tlsgate's own transports) can tell an event that was
the old socket's: the loop drops a hang-up or error of that batch, or of a
later one a handler took by polling again (it would end a connection that
has only begun), and a L{tlsgate._tcp.LeanClient} checks a writability event
of that batch with C{connect()} and reads nothing until it is connected.
Which batch is being handed out is L{DISPATCHING}.
"""

from __future__ import annotations

import errno
import sys
from types import MethodType
from typing import Any

from twisted.internet import error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log
from twisted.python.failure import Failure

#: The epoll reactor's event bits, as its _doReadOrWrite reads them.
_IN = EPollReactor._POLL_IN
_OUT = EPollReactor._POLL_OUT
_DISCONNECTED = EPollReactor._POLL_DISCONNECTED
#: What a descriptor whose fileno() is -1 is disconnected with (as posixbase).
_NO_FILEDESC = error.ConnectionFdescWentAway("File descriptor lost")
#: What a half-closeable descriptor's readConnectionLost is given at the
#: peer's FIN (posixbase gives one shared failure too).
_DONE = Failure(error.ConnectionDone())

#: The reactor attribute counting the batches of events lean_dispatch took
#: from epoll (absent: the reactor's own loop runs, and nothing counts them).
POLLS = "_tlsgate_polls"
#: The reactor attribute naming the batch whose events the loop is handing
#: out (0: none). Not always the last one taken: a handler may poll again.
DISPATCHING = "_tlsgate_dispatching"
#: The attribute in which a selectable records L{POLLS} as it was when the
#: selectable was made (None: made outside lean_dispatch's loop). Every event
#: of a batch numbered that or less was reported before it existed.
MADE_IN = "_made_in"

#: tlsgate's transport classes that provide IHalfCloseableDescriptor (their
#: modules add them): their FIN is handled in the loop. Any other class goes
#: through the reactor's _disconnectSelectable.
HALF_CLOSING: set[type] = set()


def _do_poll(self: Any, timeout: float | None) -> None:
    """
    C{EPollReactor.doPoll}, with the handler called directly, and
    C{_doReadOrWrite} (what the reactor does with one event) in the loop
    rather than a call per event: the same tests in the same order.
    """
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    self._tlsgate_polls = polls = self._tlsgate_polls + 1
    outer = self._tlsgate_dispatching
    self._tlsgate_dispatching = polls
    try:
        _dispatch(self, events, polls)
    finally:
        self._tlsgate_dispatching = outer


def _dispatch(self: Any, events: list[tuple[int, int]], polls: int) -> None:
    """Hand out the events of batch C{polls} (see L{_do_poll})."""
    selectables = self._selectables
    reads = self._reads
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            why: Any = None
            in_read = False
            if event & _DISCONNECTED and not event & _IN:
                made = getattr(selectable, MADE_IN, None)
                if made is not None and made >= polls:
                    # Made after epoll_wait returned: the hang-up was that
                    # of a socket an earlier handler closed, whose number
                    # this one reused.
                    continue
                # A hang-up with no input left: a clean end if it was being
                # read (perhaps a half-close), else an error.
                if fd in reads:
                    in_read = True
                    why = CONNECTION_DONE
                else:
                    why = CONNECTION_LOST
            else:
                try:
                    if selectable.fileno() == -1:
                        why = _NO_FILEDESC
                    else:
                        if event & _IN:
                            why = selectable.doRead()
                            in_read = True
                        if not why and event & _OUT:
                            why = selectable.doWrite()
                            in_read = False
                except BaseException:
                    # What the application raised is logged, and ends that
                    # connection (as the reactor's own loop does).
                    why = sys.exc_info()[1]
                    log.err()
            if why:
                if (
                    in_read
                    and why is CONNECTION_DONE
                    and type(selectable) in HALF_CLOSING
                    and fd in reads
                ):
                    # The peer's FIN on a half-closeable transport of
                    # tlsgate's: _disconnectSelectable's reader removal and
                    # readConnectionLost, without its calls and interface test.
                    if not watch(self, selectable, False, fd in self._writes, fd):
                        self.removeReader(selectable)
                    selectable.readConnectionLost(_DONE)
                else:
                    self._disconnectSelectable(selectable, why, in_read)
        except KeyboardInterrupt:
            raise
        except BaseException:
            # No repr of the selectable: after connectionLost it may not
            # have what its repr reads.
            log.err(None, f"Unhandled error in a {type(selectable).__name__}")


def watch(
    reactor: Any, selectable: Any, read: bool, write: bool, fd: int | None = None
) -> bool:
    """
    Have Twisted's epoll reactor watch C{selectable}'s descriptor (C{fd}, or
    its socket's) for reading and writing exactly as asked, in at most one C{epoll_ctl}, with
    the reactor's sets kept as its own C{addReader}, C{removeWriter}... keep
    them. Those make a call and a C{epoll_ctl} per direction, and a move from
    writing to reading is two (the descriptor deleted, then added again).

    @return: C{False} where it does nothing and the reactor's own calls are
        for the caller to make: another reactor, a descriptor already closed
        (C{-1}), or one not registered yet (which the reactor may have to
        give to its continuous polling).
    """
    if type(reactor) is not EPollReactor:
        return False
    if fd is None:
        # Its socket's, not its own fileno (a bound method the transport
        # holds, which the interpreter cannot call by its fast path).
        fd = selectable.socket.fileno()
        if fd == -1:
            return False
    selectables = reactor._selectables
    if selectables.get(fd) is not selectable:
        # Not registered (or the number is another's now): nothing of its to
        # stop watching; anything to start watching is for the reactor.
        return not (read or write)
    events = 0
    if read:
        reactor._reads.add(fd)
        events = _IN
    else:
        reactor._reads.discard(fd)
    if write:
        reactor._writes.add(fd)
        events |= _OUT
    else:
        reactor._writes.discard(fd)
    if events:
        reactor._poller.modify(fd, events)
    else:
        del selectables[fd]
        reactor._poller.unregister(fd)
    return True


def lean_dispatch(reactor: object) -> bool:
    """
    Give C{reactor} the direct C{doPoll}, if it is an C{EPollReactor}.

    @return: whether it was applied (or had been already).
    """
    if type(reactor) is not EPollReactor:
        return False
    for counter in (POLLS, DISPATCHING):
        if not hasattr(reactor, counter):
            setattr(reactor, counter, 0)
    poll = MethodType(_do_poll, reactor)
    reactor.doPoll = poll  # type: ignore[method-assign]
    reactor.doIteration = poll  # type: ignore[method-assign]
    return True
