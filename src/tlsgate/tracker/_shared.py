"""
Connection counts shared by worker processes, for gateway-wide caps.

One anonymous shared memory region, made before the workers are forked,
holds per listener one row per worker: its open connections, then its open
connections per client hashed into a fixed table. A worker writes only its
own row and reads every row to decide, so there is no lock and nothing to
wait for; each check reads one word per worker.

How exact it is: two workers can pass the check at the same moment, so the
gateway can go over a cap by at most (workers - 1) connections; clients whose
addresses share a table slot (hash collisions) share a cap, which refuses
early, never late.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

#: Table slots for per-client counts (per listener, per worker, 4 bytes each).
BUCKETS = 16384


class SharedCounts:
    """The region for C{listeners} and C{slots} workers; made before forking."""

    def __init__(
        self, listeners: Sequence[str], slots: int, buckets: int = BUCKETS
    ) -> None:
        self.slots = slots
        self.buckets = buckets
        self._row = 1 + buckets
        self._index = {name: i for i, name in enumerate(listeners)}
        words = len(self._index) * slots * self._row
        self._region = mmap.mmap(-1, max(4, 4 * words))  # MAP_SHARED | MAP_ANONYMOUS
        self._words = memoryview(self._region).cast("i")

    def for_worker(self, listener: str, slot: int) -> ListenerCounts:
        """Worker C{slot}'s view of C{listener}'s counts; its row starts at zero."""
        base = self._index[listener] * self.slots * self._row
        counts = ListenerCounts(self._words, base, self.slots, self._row, slot)
        counts.reset()
        return counts


class ListenerCounts:
    """
    One listener's counts as one worker sees them: writes go to its row,
    reads sum every row. Hosts are hashed with the interpreter's string hash,
    which forked workers share.
    """

    __slots__ = ("_buckets", "_mine", "_rows", "_words")

    def __init__(
        self, words: memoryview, base: int, slots: int, row: int, slot: int
    ) -> None:
        self._words = words
        self._rows = range(base, base + slots * row, row)
        self._mine = base + slot * row
        self._buckets = row - 1

    def reset(self) -> None:
        """Zero this worker's row (a replaced worker's connections are gone)."""
        mine = self._mine
        self._words[mine : mine + self._buckets + 1] = memoryview(
            bytes(4 * (self._buckets + 1))
        ).cast("i")

    def opened(self, host: str | None) -> None:
        words, mine = self._words, self._mine
        words[mine] += 1
        if host is not None:
            slot = mine + 1 + hash(host) % self._buckets
            words[slot] += 1

    def closed(self, host: str | None) -> None:
        words, mine = self._words, self._mine
        words[mine] -= 1
        if host is not None:
            slot = mine + 1 + hash(host) % self._buckets
            words[slot] -= 1

    def total(self) -> int:
        """Open connections on this listener, over every worker."""
        words = self._words
        return sum([words[r] for r in self._rows])

    def of(self, host: str) -> int:
        """Open connections from C{host} (and any host sharing its slot)."""
        words = self._words
        offset = 1 + hash(host) % self._buckets
        return sum([words[r + offset] for r in self._rows])
