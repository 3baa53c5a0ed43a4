"""One clock for the reloading factory and the tracker, moved by hand."""

from __future__ import annotations

import time

from twisted.internet.task import Clock


class TestClock(Clock):
    """
    A C{task.Clock} (for the tracker, TLS layer and endpoint) that also reads
    as a wall clock in nanoseconds (the reloading factory's C{wallclock}).

    It starts at the real time, so that files written by the test have
    plausible modification times, and moves only when advanced.
    """

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        super().__init__()
        self.rightNow = time.time()

    def wallclock(self) -> int:
        """Nanoseconds since the epoch, as the reloading factory reads them."""
        return int(self.rightNow * 1e9)
