"""
Telling the service manager how the gateway is doing: systemd's notify
protocol (sd_notify(3)), which is a datagram of C{KEY=value} lines to the Unix
socket named by C{NOTIFY_SOCKET}. A few lines of our own rather than a
dependency.

With C{Type=notify}, C{systemctl start} returns once every listener listens
(C{READY=1}), C{systemctl reload} once a SIGHUP was handled (C{RELOADING=1},
then C{READY=1}), the stop is shown as such (C{STOPPING=1}), and with
C{WatchdogSec=} a gateway whose reactor hangs is restarted (C{WATCHDOG=1}
from a reactor timer: it stops when the reactor does).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface, implementer

_log = Logger()


class INotifier(Interface):
    """The gateway's lifecycle, as a service manager wants to hear it."""

    def ready() -> None:
        """Every listener listens; a reload is done."""

    def reloading() -> None:
        """The config is being re-read."""

    def stopping() -> None:
        """A drain started."""

    def start_watchdog() -> None:
        """Begin the keep-alive pings, when the manager asked for them."""

    def stop_watchdog() -> None:
        """End them (the gateway is stopping)."""


@implementer(INotifier)
class NoNotifier:
    """No service manager listening: nothing to say."""

    def ready(self) -> None:
        pass

    def reloading(self) -> None:
        pass

    def stopping(self) -> None:
        pass

    def start_watchdog(self) -> None:
        pass

    def stop_watchdog(self) -> None:
        pass


def socket_address(value: str) -> str | bytes:
    """
    C{NOTIFY_SOCKET} as an C{AF_UNIX} address: a path, or a name in the
    abstract namespace when it starts with C{@} (Linux).
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


@implementer(INotifier)
class SystemdNotifier:
    """
    Sends sd_notify datagrams to one socket. A failed send is logged and
    never stops the gateway: serving matters more than reporting.

    @ivar watchdog_interval: seconds between C{WATCHDOG=1}, or C{None}.
    """

    def __init__(
        self,
        address: str | bytes,
        clock: IReactorTime,
        *,
        watchdog_interval: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.clock = clock
        self.watchdog_interval = watchdog_interval
        self._monotonic = monotonic
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._watchdog: LoopingCall | None = None
        self._failing = False

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        clock: IReactorTime,
        *,
        pid: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> SystemdNotifier | None:
        """
        The notifier C{environ} asks for, or C{None} without C{NOTIFY_SOCKET}.

        The watchdog is on when C{WATCHDOG_USEC} is set and C{WATCHDOG_PID},
        if set, is this process (systemd sets it to the main process it
        watches); pings come at half the interval, as sd_watchdog_enabled(3)
        recommends.
        """
        target = environ.get("NOTIFY_SOCKET", "")
        if not target:
            return None
        interval = None
        usec = environ.get("WATCHDOG_USEC", "")
        watched = environ.get("WATCHDOG_PID", "")
        me = os.getpid() if pid is None else pid
        if usec.isdigit() and int(usec) > 0 and watched in ("", str(me)):
            interval = int(usec) / 2_000_000
        return cls(
            socket_address(target),
            clock,
            watchdog_interval=interval,
            monotonic=monotonic,
        )

    def notify(self, *fields: str) -> None:
        """Send C{fields} (C{KEY=value}) in one datagram."""
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:
            if not self._failing:
                _log.warn(
                    "sd_notify to {address!r} failed ({why}); the service manager"
                    " may not see the gateway's state",
                    address=self.address,
                    why=e.strerror,
                    event="sd_notify_failed",
                )
            self._failing = True
        else:
            self._failing = False

    def ready(self) -> None:
        self.notify("READY=1", "STATUS=serving")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload tell this reload from an
        # earlier one; plain Type=notify ignores it.
        usec = int(self._monotonic() * 1_000_000)
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=draining")

    def start_watchdog(self) -> None:
        if self.watchdog_interval is None or self._watchdog is not None:
            return
        self._watchdog = LoopingCall(self.notify, "WATCHDOG=1")
        self._watchdog.clock = self.clock
        self._watchdog.start(self.watchdog_interval, now=True)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def close(self) -> None:
        self.stop_watchdog()
        self._socket.close()
