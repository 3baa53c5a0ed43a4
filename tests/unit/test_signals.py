"""The plugin's stop handlers: a second SIGTERM/SIGINT during a drain joins it."""

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
    assert installed == {}  # only once the reactor runs
    (install,) = reactor.when_running
    install()
    installed[signal.SIGTERM](signal.SIGTERM, None)
    installed[signal.SIGINT](signal.SIGINT, None)
    installed[signal.SIGTERM](signal.SIGTERM, None)
    assert len(reactor.from_thread) == 1
    reactor.from_thread[0]()
    assert stops == ["stop"]
