"""
File stamps: the cheap question "has this file changed since I read it?".

A stamp is C{(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)} of the file
a path leads to, symlinks followed. An atomic rename changes the inode, an
in-place rewrite the size or times, Kubernetes' C{..data} symlink swap the
device/inode the path resolves to; all are seen by one C{stat} per file.

Timestamps are coarse on many filesystems, so two same-size writes within one
tick can leave identical stamps. As git does for "racily clean" index entries,
a file whose mtime is too close to the moment its content was read is not
trusted on its stamp alone: its content hash is checked again on later looks
until the file is old enough.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Stamp = tuple[int, int, int, int, int]
StatFunction = Callable[[str], os.stat_result]

#: How close (in ns) an mtime may be to the read before the stamp is "racy".
#: Two seconds covers FAT's granularity and the coarse clocks of network
#: filesystems; ext4 and xfs tick in milliseconds at most.
RACY_WINDOW_NS = 2_000_000_000


def stamp_of(path: str, stat: StatFunction = os.stat) -> Stamp | None:
    """The stamp of C{path}, or C{None} when it cannot be stat'ed (e.g. missing)."""
    try:
        s = stat(path)
    except OSError:
        return None
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


@dataclass(frozen=True)
class FileRead:
    """What reading one file gave: its bytes, or the reason it could not be read."""

    path: str
    content: bytes | None
    error: str | None

    @property
    def digest(self) -> bytes | None:
        if self.content is None:
            return None
        return hashlib.sha256(self.content).digest()


def read_file(path: str) -> FileRead:
    """Read C{path} whole, turning OS errors into a readable reason."""
    try:
        with open(path, "rb") as f:
            return FileRead(path, f.read(), None)
    except FileNotFoundError:
        return FileRead(path, None, "file not found")
    except IsADirectoryError:
        return FileRead(path, None, "is a directory, not a file")
    except OSError as e:
        return FileRead(path, None, e.strerror or str(e))


@dataclass(frozen=True)
class Snapshot:
    """
    The stamps and content hashes of a set of files, taken together.

    C{racy} is set when some file's mtime was within L{RACY_WINDOW_NS} before
    the read, so identical stamps later do not prove identical content. An
    mtime in the future is clock skew, not a same-tick write, and is trusted
    (else every connection would re-read until the clock caught up).
    """

    stamps: tuple[Stamp | None, ...]
    digests: tuple[bytes | None, ...]
    racy: bool

    @classmethod
    def take(
        cls,
        stamps: tuple[Stamp | None, ...],
        reads: Sequence[FileRead],
        read_at_ns: int,
    ) -> Snapshot:
        return cls(
            stamps=stamps,
            digests=tuple(r.digest for r in reads),
            racy=any(
                s is not None and 0 <= read_at_ns - s[3] < RACY_WINDOW_NS
                for s in stamps
            ),
        )


class FileSetWatch:
    """
    C{changed()} is true on its first call and then once after any of C{paths}
    got a new stamp: the one-file-or-few watch of token, OCSP and backend TLS
    files (the certificate factory keeps richer state: content hashes, racy
    stamps, the last good files).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = tuple(paths)
        self._stamps: tuple[Stamp | None, ...] | None = None

    def changed(self) -> bool:
        stamps = tuple([stamp_of(p) for p in self.paths])
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return True
