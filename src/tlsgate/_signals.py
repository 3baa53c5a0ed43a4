"""
Process signals for the twistd plugin: SIGTERM and SIGINT stop the gateway and
exit 0; SIGHUP re-reads the config.

twistd's own handlers re-raise the stopping signal at exit (status 143 or
130), which supervisors read as a crash; the interface promises exit 0. The
handlers are installed once the reactor runs (after twistd installed its
own), and only for the plugin: embedders keep their own signal handling.

SIGHUP is caught from the start as well. The listeners bind before the
reactor runs (in C{privilegedStartService}, before twistd drops
privileges), and SIGHUP's default action would end the process with
connections already in its accept queue: a C{systemctl reload} or a
logrotate in that moment must not take the gateway down. A SIGHUP then is
kept, and the config is re-read once the reactor runs.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from types import FrameType

from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.logger import Logger

_log = Logger()


def install_stop_handlers(
    reactor: IReactorCore,
    stop: Callable[[], object] | None = None,
    hangup: Callable[[], object] | None = None,
) -> None:
    """
    From the reactor's start on, SIGTERM and SIGINT call C{stop} (default:
    C{reactor.stop}) and SIGHUP calls C{hangup}, in the reactor thread.
    """
    stopper = stop if stop is not None else reactor.stop
    threads: IReactorFromThreads = reactor  # type: ignore[assignment]

    stopping: list[int] = []

    def handler(number: int, frame: FrameType | None) -> None:
        # A second signal during the drain (an impatient operator, a
        # supervisor repeating itself) joins it: stopping twice would only
        # log ReactorNotRunning.
        if stopping:
            _log.info(
                "Received {signal} while stopping; the drain goes on.",
                signal=signal.Signals(number).name,
            )
            return
        stopping.append(number)
        _log.info(
            "Received {signal}, shutting down.", signal=signal.Signals(number).name
        )
        threads.callFromThread(stopper)

    def on_hangup(number: int, frame: FrameType | None) -> None:
        # Never SIGHUP's default action (ending the process): operators and
        # logrotate send it routinely.
        _log.info("Received SIGHUP, re-reading the config.")
        if hangup is not None:
            threads.callFromThread(hangup)

    early: list[int] = []

    def on_early_hangup(number: int, frame: FrameType | None) -> None:
        # Before the reactor runs (the ports may listen already): kept, so
        # that a config changed meanwhile is still read.
        if not early:
            _log.info(
                "Received SIGHUP while starting; the config is re-read once running."
            )
        early.append(number)

    def install() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)
        signal.signal(signal.SIGHUP, on_hangup)
        if early and hangup is not None:
            threads.callFromThread(hangup)

    # (Outside the main thread signal.signal raises: handlers once running only.)
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, on_early_hangup)
    reactor.callWhenRunning(install)
