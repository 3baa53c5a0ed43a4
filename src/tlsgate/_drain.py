"""
The order of a graceful stop, in one place (L{GatewayService} runs it; with
C{workers}, each worker runs it while the supervisor's readiness is already
false, so the gateway as a whole stops the same way):

1. draining starts: readiness turns false (C{/readyz} answers 503) and the
   service manager hears C{STOPPING=1};
2. for C{drain_delay}, listeners go on accepting, so that load balancers and
   Kubernetes endpoints, which only learn of the drain at their next health
   check or watch event, stop sending before anything is refused;
3. listeners close;
4. open connections get C{drain_timeout} to finish, then the rest are closed.

Closing listeners together with the readiness change (as tlsgate did before
C{drain_delay}) resets the connections a balancer still sends, and those
waiting in the closed listener's backlog.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


class StagedDrain:
    """
    Runs the stop sequence once, whoever asks first (a signal, C{POST /drain},
    C{stopService}); later callers wait for the same run.

    The three stages are callables so that the owner decides what they mean:
    a gateway process closes its own ports and drains its own trackers.

    @ivar started: whether draining has started (readiness is false from then on).
    """

    def __init__(
        self,
        clock: IReactorTime,
        announce: Callable[[], object],
        close_listeners: Callable[[], Awaitable[object] | None],
        finish: Callable[[float], Awaitable[object] | None],
    ) -> None:
        """
        @param announce: called once, synchronously, when draining starts.
        @param close_listeners: stop accepting; may return an awaitable.
        @param finish: given the drain timeout, let open connections end; may
            return a L{Deferred} that fires when none is left.
        """
        self.clock = clock
        self._announce = announce
        self._close_listeners = close_listeners
        self._finish = finish
        self.started = False
        self._done = False
        self._finishing = False
        self._timeout = 0.0
        self._waiting: list[Deferred[None]] = []

    def start(self, delay: float, timeout: float) -> Deferred[None]:
        """
        Start draining (unless already started) and return a L{Deferred} that
        fires once no connection is left. C{delay} is the first call's; a
        later call joins the run in progress, and its C{timeout} applies if it
        is shorter (0 means no limit): a worker retired by a new generation
        with a long wait is cut to C{drain_timeout} when told to stop.
        """
        waiter: Deferred[None] = Deferred()
        if self._done:
            waiter.callback(None)
            return waiter
        self._waiting.append(waiter)
        if not self.started:
            self.started = True
            self._timeout = timeout
            self._announce()
            ensureDeferred(self._run(delay)).addBoth(self._fire)
        elif timeout and (not self._timeout or timeout < self._timeout):
            self._timeout = timeout
            if self._finishing:
                # The finish stage keeps the shorter of two limits.
                self._finish(timeout)
        return waiter

    async def _run(self, delay: float) -> None:
        if delay > 0:
            _log.info(
                "draining: still accepting for {delay:g}s (drain_delay) while"
                " readiness says 503",
                delay=delay,
                event="drain_delay",
            )
            await deferLater(self.clock, delay)
        closed = self._close_listeners()
        if closed is not None:
            await closed
        self._finishing = True
        finished = self._finish(self._timeout)
        if finished is not None:
            await finished

    def _fire(self, result: Failure | None) -> None:
        self._done = True
        if isinstance(result, Failure):
            _log.failure("draining failed", result)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)
