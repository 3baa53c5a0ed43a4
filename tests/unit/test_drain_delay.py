"""
C{drain_delay}: readiness turns 503 at once, listeners keep accepting for the
delay, then close and C{drain_timeout} runs, all on a MemoryReactorClock.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tlsgate._drain import StagedDrain
from tlsgate._reconfigure import reconfigure
from tlsgate._sdnotify import INotifier
from tlsgate.admin import LocalView
from tlsgate.admin._resources import Ready
from tlsgate.config import parse_config
from tlsgate.service import GatewayService, build_service


@implementer(INotifier)
class Recorder:
    def __init__(self) -> None:
        self.said: list[str] = []

    def ready(self) -> None:
        self.said.append("ready")

    def reloading(self) -> None:
        self.said.append("reloading")

    def stopping(self) -> None:
        self.said.append("stopping")

    def start_watchdog(self) -> None:
        self.said.append("watchdog on")

    def stop_watchdog(self) -> None:
        self.said.append("watchdog off")


def ini(tmp: Path, gateway: str) -> str:
    return (
        f"[gateway]\n{gateway}\n"
        f"[listener:web]\nlisten = tcp:8443\nbackend = tcp:127.0.0.1:9\n"
        f"cert = {tmp / 'c.pem'}\nkey = {tmp / 'k.pem'}\n"
    )


def start(
    tmp: Path, gateway: str
) -> tuple[GatewayService, MemoryReactorClock, Recorder]:
    reactor = MemoryReactorClock()
    service = build_service(parse_config(ini(tmp, gateway), file="g.ini"), reactor)
    assert isinstance(service, GatewayService)
    recorder = Recorder()
    service.notifier = recorder
    service.privilegedStartService()
    service.startService()
    return service, reactor, recorder


def readyz(gateway: GatewayService) -> int:
    request = DummyRequest([b""])
    Ready(LocalView(gateway)).render_GET(request)  # type: ignore[arg-type]
    return int(request.responseCode or 200)


def listening(gateway: GatewayService) -> bool:
    return gateway.listeners["web"].service.listening


def test_drain_delay_keeps_accepting_while_readyz_says_503(tmp: Path) -> None:
    gateway, reactor, recorder = start(tmp, "drain_delay = 5s\ndrain_timeout = 30s")
    assert readyz(gateway) == 200
    done = gateway.drain()
    assert readyz(gateway) == 503
    assert recorder.said == ["ready", "watchdog on", "stopping"]
    reactor.advance(4.9)
    assert listening(gateway), "listeners must accept during drain_delay"
    assert not done.called
    reactor.advance(0.2)
    assert not listening(gateway)
    assert done.called  # no connections were open


def test_without_drain_delay_listeners_close_at_once(tmp: Path) -> None:
    gateway, _, _ = start(tmp, "drain_timeout = 30s")
    done = gateway.drain()
    assert readyz(gateway) == 503
    assert not listening(gateway)
    assert done.called


def test_stop_during_a_requested_drain_joins_it(tmp: Path) -> None:
    """POST /drain, then SIGTERM: one sequence, one STOPPING=1, no restart of the delay."""
    gateway, reactor, recorder = start(tmp, "drain_delay = 2s")
    first = gateway.drain()
    reactor.advance(1.5)
    stopped = gateway.stopService()
    assert listening(gateway)
    reactor.advance(0.6)
    assert not listening(gateway)
    assert first.called and stopped.called
    assert recorder.said.count("stopping") == 1
    assert recorder.said[-1] == "watchdog off"


def test_drain_delay_is_reloadable(tmp: Path) -> None:
    gateway, reactor, _ = start(tmp, "drain_delay = 1s")
    new = parse_config(ini(tmp, "drain_delay = 10s"), file="g.ini")
    changes = ensureDeferred(reconfigure(gateway, new, reactor)).result  # type: ignore[attr-defined]
    assert "drain_delay: now 10s" in changes
    gateway.drain()
    reactor.advance(9)
    assert listening(gateway)
    reactor.advance(1)
    assert not listening(gateway)


def test_drain_delay_parses_as_a_duration(tmp: Path) -> None:
    assert parse_config(ini(tmp, "drain_delay = 250ms"), file="g").drain_delay == 0.25
    assert parse_config(ini(tmp, ""), file="g").drain_delay == 0


def test_staged_drain_order_and_failure() -> None:
    """The stages run in order; a failing stage still releases every waiter."""
    clock = Clock()
    steps: list[str] = []
    closing: Deferred[object] = Deferred()

    def close() -> Deferred[object]:
        steps.append("close")
        return closing

    def finish(timeout: float) -> None:
        steps.append(f"finish {timeout:g}")
        raise RuntimeError("boom")

    stop = StagedDrain(clock, lambda: steps.append("announce"), close, finish)
    first = stop.start(3, 7)
    second = stop.start(99, 99)
    assert steps == ["announce"] and stop.started
    clock.advance(3)
    assert steps == ["announce", "close"]
    closing.callback(None)
    assert steps == ["announce", "close", "finish 7"]
    assert first.called and second.called
    assert stop.start(1, 1).called
    assert steps.count("announce") == 1


def test_recorder_is_a_notifier() -> None:
    assert verifyObject(INotifier, Recorder())


def test_a_later_shorter_timeout_cuts_a_drain_short() -> None:
    """
    A worker retired by a new generation drains with a long limit; told to
    stop, the shorter C{drain_timeout} applies, before and after the finish
    stage began. A longer or unlimited (0) one changes nothing.
    """
    clock = Clock()
    finishes: list[float] = []
    open_connections: Deferred[None] = Deferred()

    def finish(timeout: float) -> Deferred[None]:
        finishes.append(timeout)
        return open_connections

    stop = StagedDrain(clock, lambda: None, lambda: None, finish)
    stop.start(2, 86400)
    stop.start(0, 3600)  # still in drain_delay: remembered
    clock.advance(2)
    assert finishes == [3600]
    stop.start(0, 0)
    stop.start(0, 7200)
    assert finishes == [3600]
    stop.start(0, 30)  # finishing: applied at once
    assert finishes == [3600, 30]
    open_connections.callback(None)
    assert stop.start(0, 1).called
