"""
Per-connection work that one delayed call per reactor does for all
connections: the closes due at the next turn (L{tlsgate._tcp}), the memory
BIO renewals due within half a second (L{tlsgate._tlscore}).

A delayed call made and cancelled per connection costs a relayed connection
more than the work it times; a L{Batch} costs a dictionary entry.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from twisted.logger import Logger

T = TypeVar("T", bound=Hashable)
B = TypeVar("B")

#: The reactors whose shared timers may outlive what they time: see
#: L{linger}.
LINGERING: set[Any] = set()


def linger(reactor: Any) -> None:
    """
    Let the shared timers of C{reactor} (L{Batch}es, and the backend dials'
    deadlines in L{tlsgate._tcp}) keep their delayed call when the last thing
    they timed has gone, until it fires: the gateway's own reactor, where
    cancelling it and making another for the next connection would cost what
    sharing it saves. Any other reactor (an embedder's, a test's) is left with
    no delayed call of tlsgate's once its connections are done, as Twisted's
    tests expect.
    """
    LINGERING.add(reactor)


def cancel(owner: Any) -> None:
    """Cancel C{owner._call}, if it is pending."""
    call, owner._call = owner._call, None
    if call is not None and call.active():
        call.cancel()


class Batch(Generic[T]):
    """
    Objects of one clock that C{act} handles all together, C{delay} seconds
    after the first was added, in the order they were added, each once. One
    that is discarded first is not handled; once none is left the call is
    cancelled, unless the clock L{linger}s. What C{act} raises for one is
    logged, and the others are still handled.
    """

    _log = Logger()

    def __init__(
        self, clock: Any, delay: float, act: Callable[[T], object], what: str
    ) -> None:
        self.clock = clock
        self.delay = delay
        self.act = act
        #: What the log says when C{act} fails ("closing", ...).
        self.what = what
        #: Insertion-ordered.
        self.due: dict[T, None] = {}
        self._call: Any = None
        self.linger = clock in LINGERING

    def add(self, item: T) -> None:
        self.due[item] = None
        # A call cancelled from outside (a test's reactor clean-up) must not
        # leave what was added waiting forever.
        if self._call is None or not self._call.active():
            self._call = self.clock.callLater(self.delay, self.run)

    def discard(self, item: T) -> None:
        due = self.due
        due.pop(item, None)
        if not due and not self.linger:
            cancel(self)

    def run(self) -> None:
        self._call = None
        due, self.due = self.due, {}
        act = self.act
        for item in due:
            try:
                act(item)
            except Exception:
                self._log.failure("{what} {item!r}", what=self.what, item=item)


def per_clock(
    registry: dict[Any, B], key: Any, make: Callable[..., B], *args: Any
) -> B:
    """
    C{registry[key]}, made by C{make(*args)} the first time (arguments, not
    a closure: the callers run per connection, and a lambda would be made on
    every call). A plain dictionary: a gateway has one entry per clock (and
    per timeout), a test run one per reactor it made; a weak one cost each
    use two Python calls and kept its keys alive all the same (each value
    holds its clock).
    """
    found = registry.get(key)
    if found is None:
        found = registry[key] = make(*args)
    return found
