"""
Connection counts shared by worker processes, for gateway-wide caps.

Each generation of workers (a fork server and the workers it forks) has one
shared memory region, a memfd made by the supervisor: per listener, one row
per worker, holding its open connections and then its open connections per
client, hashed into a fixed table. A worker writes only its own row and
reads every row to decide, so there is no lock and nothing to wait for.

Workers replaced by a new generation (a SIGHUP, the daily ticket key
rotation) keep their connections for a while but accept none: they only
write. The new generation's workers also read the regions of the older
generations still alive, so a cap counts those connections too.

How exact it is: two workers can pass the check at the same moment, so the
gateway can go over a cap by at most (workers - 1) connections; clients whose
addresses share a table slot (hash collisions) share a cap, which refuses
early, never late. Hosts are hashed with CRC-32, which every process agrees
on (Python's string hash differs between fork servers).
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

#: Table slots for per-client counts (per listener, per worker, 4 bytes each).
BUCKETS = 16384


@dataclass(frozen=True)
class RegionLayout:
    """What a process needs to map a region made elsewhere: its shape."""

    listeners: tuple[str, ...]
    slots: int
    buckets: int = BUCKETS


class SharedCounts:
    """
    One generation's region, for C{listeners} and C{slots} workers.

    @param fd: a descriptor of a region made by another process (its layout
        must be the same); by default a new one is made.
    """

    def __init__(
        self,
        listeners: Sequence[str],
        slots: int,
        buckets: int = BUCKETS,
        fd: int | None = None,
    ) -> None:
        self.layout = RegionLayout(tuple(listeners), slots, buckets)
        self._row = 1 + buckets
        self._index = {name: i for i, name in enumerate(self.layout.listeners)}
        size = max(4, 4 * len(self._index) * slots * self._row)
        if fd is None:
            fd = os.memfd_create("tlsgate-counts", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        #: The region's descriptor, for the next processes to map it.
        self.fd = fd
        self._region = mmap.mmap(fd, size)  # MAP_SHARED
        self._words = memoryview(self._region).cast("i")

    @classmethod
    def mapped(cls, layout: RegionLayout, fd: int) -> SharedCounts:
        """The region made elsewhere, inherited at C{fd}."""
        return cls(layout.listeners, layout.slots, layout.buckets, fd)

    def rows(self, listener: str) -> tuple[memoryview, range] | None:
        """Where C{listener}'s rows are (C{None}: not in this region)."""
        index = self._index.get(listener)
        if index is None:
            return None
        base = index * self.layout.slots * self._row
        return self._words, range(base, base + self.layout.slots * self._row, self._row)

    def for_worker(
        self, listener: str, slot: int, older: Sequence[SharedCounts] = ()
    ) -> ListenerCounts:
        """
        Worker C{slot}'s view of C{listener}'s counts: its row (zeroed: a
        replaced worker's connections are gone) in this region, read together
        with every row of the C{older} generations' regions.
        """
        found = self.rows(listener)
        assert found is not None, listener
        words, rows = found
        reads = [found] + [r for o in older if (r := o.rows(listener)) is not None]
        counts = ListenerCounts(words, rows.start + slot * self._row, self._row, reads)
        counts.reset()
        return counts

    def close(self) -> None:
        """Let go of the region (its memory goes once no process maps it)."""
        self._words.release()
        self._region.close()
        os.close(self.fd)


class ListenerCounts:
    """
    One listener's counts as one worker sees them: writes go to its row,
    reads sum every row of every region it was given.
    """

    __slots__ = ("_buckets", "_mine", "_reads", "_words")

    def __init__(
        self,
        words: memoryview,
        mine: int,
        row: int,
        reads: Sequence[tuple[memoryview, range]],
    ) -> None:
        self._words = words
        self._mine = mine
        self._buckets = row - 1
        self._reads = tuple(reads)

    def reset(self) -> None:
        """Zero this worker's row."""
        mine = self._mine
        self._words[mine : mine + self._buckets + 1] = memoryview(
            bytes(4 * (self._buckets + 1))
        ).cast("i")

    def _slot(self, host: str) -> int:
        return 1 + zlib.crc32(host.encode()) % self._buckets

    def opened(self, host: str | None) -> None:
        words, mine = self._words, self._mine
        words[mine] += 1
        if host is not None:
            words[mine + self._slot(host)] += 1

    def closed(self, host: str | None) -> None:
        words, mine = self._words, self._mine
        words[mine] -= 1
        if host is not None:
            words[mine + self._slot(host)] -= 1

    def total(self) -> int:
        """Open connections on this listener, over every worker."""
        return sum([words[r] for words, rows in self._reads for r in rows])

    def of(self, host: str) -> int:
        """Open connections from C{host} (and any host sharing its slot)."""
        offset = self._slot(host)
        return sum([words[r + offset] for words, rows in self._reads for r in rows])
