"""Watching a few files by stamp, as the server side does, for the client side."""

from __future__ import annotations

from collections.abc import Sequence

from tlsgate.certs._stamps import Stamp, stamp_of


class FileSetWatch:
    """C{changed()} is true once after any of C{paths} got a new stamp."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = tuple(paths)
        self._stamps: tuple[Stamp | None, ...] | None = None

    def changed(self) -> bool:
        stamps = tuple([stamp_of(p) for p in self.paths])
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return True
