"""
A directory of certificates chosen by the client's SNI, following the files.

Fixes the four flaws Twisted's own C{autoReloadingDirectoryOfPEMs} lists:
 - files are not re-read on each rescan: each file is its own reloading
   context factory, parsed only when its stamps change;
 - the directory is rescanned only when its own stamp changes (a file added,
   removed or renamed in), never because a client sent an unknown name;
 - a certificate changed in place for a known name is seen on the next
   connection for that name (its factory stats its files when chosen);
 - among several certificates for a name, the one currently valid with the
   latest notAfter is served.

Files: C{NAME.pem} holding chain and key, or C{NAME.crt} with C{NAME.key}.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from OpenSSL import SSL
from twisted.logger import Logger

from tlsgate.certs._stamps import Stamp, stamp_of
from tlsgate.errors import CertificateError

if TYPE_CHECKING:
    from tlsgate.certs._reloading import ReloadingContextFactory

_log = Logger()


@dataclass
class _Entry:
    cert: str
    key: str | None
    factory: ReloadingContextFactory
    names: tuple[str, ...]
    generation: int


def certificate_files(directory: str) -> dict[str, tuple[str, str | None]]:
    """The certificate files of C{directory}: key -> (cert, key or None)."""
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_file())
    except OSError:
        return {}
    found: dict[str, tuple[str, str | None]] = {}
    present = set(names)
    for n in names:
        base, ext = os.path.splitext(n)
        if ext == ".pem":
            found[n] = (os.path.join(directory, n), None)
        elif ext == ".crt" and f"{base}.key" in present:
            found[n] = (
                os.path.join(directory, n),
                os.path.join(directory, f"{base}.key"),
            )
    return found


class SniDirectory:
    """
    The certificates of C{sni_dir}, indexed by the DNS names of their SANs.

    @param make: builds a reloading context factory for one file pair, with
        the listener's TLS policy and client-certificate settings, so that
        ALPN and verification carry over when a connection switches context.
    """

    def __init__(
        self,
        directory: str,
        make: Callable[[str, str | None], ReloadingContextFactory],
        name: str = "default",
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(
            datetime.UTC
        ),
    ) -> None:
        self.directory = directory
        self._make = make
        self.name = name
        self._now = now
        self._stamp: Stamp | bool | None = False
        self.entries: dict[str, _Entry] = {}
        self.errors: dict[str, str] = {}
        self._failed: dict[str, tuple[Stamp | None, ...]] = {}
        self._index: dict[str, list[_Entry]] = {}
        self.rescans = 0
        self._rescan_if_changed()

    # -- the directory ---------------------------------------------------

    def _rescan_if_changed(self) -> None:
        stamp = stamp_of(self.directory)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self.rescans += 1
        pairs = certificate_files(self.directory)
        for key in list(self.entries):
            if (
                key not in pairs
                or (self.entries[key].cert, self.entries[key].key) != pairs[key]
            ):
                del self.entries[key]
        for key, (cert, keyfile) in pairs.items():
            if key not in self.entries:
                self._load(key, cert, keyfile)
        for key in list(self.errors):
            if key not in pairs:
                del self.errors[key]
        self._reindex()

    def _load(self, key: str, cert: str, keyfile: str | None) -> None:
        stamps = (stamp_of(cert), stamp_of(keyfile) if keyfile else None)
        if self._failed.get(key) == stamps:
            return  # the same broken files: not parsed again
        try:
            factory = self._make(cert, keyfile)
        except CertificateError as e:
            self._failed[key] = stamps
            self.errors[key] = str(e)
            _log.error(
                "{listener}: sni_dir: skipping {path}: {error}",
                listener=self.name, path=cert, error=str(e), event="sni_certificate_skipped",
            )  # fmt: skip
            return
        self._failed.pop(key, None)
        self.errors.pop(key, None)
        state = factory.state
        self.entries[key] = _Entry(
            cert, keyfile, factory, state.material.names, state.generation
        )

    def _reindex(self) -> None:
        index: dict[str, list[_Entry]] = {}
        for entry in self.entries.values():
            for n in entry.names:
                index.setdefault(n.lower().rstrip("."), []).append(entry)
        self._index = index

    # -- the per-connection lookup ------------------------------------------

    def context_for(self, server_name: str) -> SSL.Context | None:
        """The context to serve C{server_name}, or C{None}: none matches."""
        self._rescan_if_changed()
        name = server_name.lower().rstrip(".")
        candidates = self._candidates(name)
        if not candidates:
            return None
        best = None
        best_key: tuple[bool, datetime.datetime] | None = None
        now = self._now()
        changed = False
        for entry in candidates:
            context = entry.factory.getContext()
            state = entry.factory.state
            if state.generation != entry.generation:
                entry.generation = state.generation
                if state.material.names != entry.names:
                    entry.names = state.material.names
                    changed = True
            material = state.material
            if name not in _matchable(entry.names, name):
                continue
            rank = (material.validity_problem(now) is None, material.not_after)
            if best_key is None or rank > best_key:
                best, best_key = context, rank
        if changed:
            self._reindex()
        return best

    def _candidates(self, name: str) -> list[_Entry]:
        found = list(self._index.get(name, ()))
        head, dot, rest = name.partition(".")
        if dot and head:
            found += self._index.get(f"*.{rest}", [])
        return found


def _matchable(names: tuple[str, ...], name: str) -> set[str]:
    """The names of C{names} that C{name} matches (wildcards: one label)."""
    out = set()
    for n in names:
        n = n.lower().rstrip(".")
        if n == name:
            out.add(name)
        elif n.startswith("*."):
            head, dot, rest = name.partition(".")
            if dot and head and rest == n[2:]:
                out.add(name)
    return out


__all__ = ["SniDirectory", "certificate_files"]
