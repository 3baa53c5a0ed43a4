"""
Expiry warnings: a log line at 30, 7 and 1 days before a served certificate
expires, once each, and at every start while under 7 days.

Checked when a certificate is loaded and once an hour after; nothing runs
per connection.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tlsgate.certs._reloading import CertificateState, ReloadingContextFactory

#: Days before expiry at which a warning is logged, most distant first.
THRESHOLDS_DAYS = (30, 7, 1)
CHECK_EVERY = 3600.0

_log = Logger()


def threshold_reached(days_left: float) -> int | None:
    """The most urgent threshold C{days_left} has reached, if any."""
    reached = [t for t in THRESHOLDS_DAYS if days_left <= t]
    return min(reached) if reached else None


class ExpiryWarnings:
    """Watches one listener's served certificate and warns as expiry nears."""

    def __init__(
        self,
        contexts: ReloadingContextFactory,
        clock: IReactorTime,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.contexts = contexts
        self._wallclock = wallclock
        self._warned: set[tuple[str, int]] = set()
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        contexts.listeners.append(self._changed)

    def start(self) -> None:
        """Check now (so every start under 7 days warns) and then hourly."""
        if not self._loop.running:
            self._loop.start(CHECK_EVERY, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _changed(self, state: CertificateState) -> None:
        self.check()

    def check(self) -> int | None:
        """Log a warning if a new threshold was reached; return it."""
        material = self.contexts.state.material
        now = datetime.datetime.fromtimestamp(self._wallclock(), datetime.UTC)
        days_left = (material.not_after - now).total_seconds() / 86400
        threshold = threshold_reached(days_left)
        if threshold is None:
            return None
        key = (material.fingerprint_sha256, threshold)
        if key in self._warned:
            return None
        self._warned.update(
            (material.fingerprint_sha256, t) for t in THRESHOLDS_DAYS if t >= threshold
        )
        _log.warn(
            "{listener}: certificate {fingerprint} ({names}) expires at {not_after}:"
            " {days:.1f} days left. Renew it; the new files are picked up on the next"
            " connection.",
            listener=self.contexts.name,
            fingerprint=material.fingerprint_sha256,
            names=", ".join(material.names),
            not_after=material.not_after.isoformat(),
            days=days_left,
            event="certificate_expiring",
        )
        return threshold
