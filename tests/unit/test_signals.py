"""The plugin's signal handlers: a second SIGTERM/SIGINT joins the drain; an early SIGHUP waits."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from tlsgate._signals import install_stop_handlers


class FakeReactor:
    def __init__(self) -> None:
        self.when_running: list[Callable[[], object]] = []
        self.from_thread: list[Callable[[], object]] = []

    def callWhenRunning(self, f: Callable[[], object]) -> None:
        self.when_running.append(f)

    def callFromThread(self, f: Callable[[], object]) -> None:
        self.from_thread.append(f)

    def stop(self) -> None:
        raise AssertionError("the injected stop is used")


def test_second_stop_signal_joins_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", lambda n, h: installed.__setitem__(n, h))
    reactor = FakeReactor()
    stops: list[str] = []
    install_stop_handlers(reactor, stop=lambda: stops.append("stop"))  # type: ignore[arg-type]
    assert set(installed) == {signal.SIGHUP}  # the stop handlers once it runs
    (install,) = reactor.when_running
    install()
    installed[signal.SIGTERM](signal.SIGTERM, None)
    installed[signal.SIGINT](signal.SIGINT, None)
    installed[signal.SIGTERM](signal.SIGTERM, None)
    assert len(reactor.from_thread) == 1
    reactor.from_thread[0]()
    assert stops == ["stop"]


def test_a_sighup_before_the_reactor_runs_is_kept_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The ports listen before the reactor runs; SIGHUP's default action would
    end the process then. It is caught from the start, and the config is
    re-read once, when the reactor runs, however many came.
    """
    installed: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", lambda n, h: installed.__setitem__(n, h))
    reactor = FakeReactor()
    hangups: list[str] = []
    install_stop_handlers(reactor, hangup=lambda: hangups.append("reload"))  # type: ignore[arg-type]
    early = installed[signal.SIGHUP]
    assert early not in (signal.SIG_DFL, None)
    early(signal.SIGHUP, None)
    early(signal.SIGHUP, None)
    assert reactor.from_thread == []  # nothing runs before the reactor does
    (install,) = reactor.when_running
    install()
    assert installed[signal.SIGHUP] is not early
    assert len(reactor.from_thread) == 1
    reactor.from_thread[0]()
    assert hangups == ["reload"]
    # Once running, each SIGHUP re-reads the config.
    installed[signal.SIGHUP](signal.SIGHUP, None)
    assert len(reactor.from_thread) == 2


def test_no_early_sighup_no_reload_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", lambda n, h: installed.__setitem__(n, h))
    reactor = FakeReactor()
    install_stop_handlers(reactor, hangup=lambda: None)  # type: ignore[arg-type]
    (install,) = reactor.when_running
    install()
    assert reactor.from_thread == []
