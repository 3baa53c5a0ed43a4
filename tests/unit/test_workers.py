"""
The supervisor's decisions without processes: respawn and back-off, signal
fan-out, generations, and how worker reports add up (fake fork servers on a
MemoryReactorClock, workers as StringTransports).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.errors import TlsgateError
from tlsgate.workers import (
    Backoff,
    IForkServer,
    ILauncher,
    SupervisorService,
    SupervisorView,
    merge_metrics,
    merge_status,
)
from tlsgate.workers._control import WorkerControl
from tlsgate.workers._sockets import BoundSocket
from tlsgate.workers._wire import ForkServerSetup


def test_backoff_replaces_at_once_then_waits_longer() -> None:
    """The first death is replaced at once; a worker that keeps dying waits 1, 2, 4 ... 30 s."""
    b = Backoff(window=60, ceiling=30)
    assert [b.died(0, 1.0) for _ in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert b.died(1, 1.0) == 0  # per slot
    assert b.died(0, 120.0) == 0  # a worker that lived long starts a new streak


def _family(
    name: str, kind: str, *samples: tuple[str, dict[str, str], float]
) -> dict[str, Any]:
    return {"name": name, "documentation": name, "type": kind,
            "samples": [list(s) for s in samples]}  # fmt: skip


def test_counters_are_summed_generations_are_not() -> None:
    a = [
        _family("tlsgate_connections", "counter", ("tlsgate_connections_total", {"listener": "web"}, 3)),
        _family("tlsgate_certificate_generation", "gauge", ("tlsgate_certificate_generation", {"listener": "web"}, 2)),
    ]  # fmt: skip
    b = [
        _family("tlsgate_connections", "counter", ("tlsgate_connections_total", {"listener": "web"}, 4)),
        _family("tlsgate_certificate_generation", "gauge", ("tlsgate_certificate_generation", {"listener": "web"}, 1)),
    ]  # fmt: skip
    retired = {("tlsgate_connections_total", (("listener", "web"),)): 10.0}
    merged = {f.name: f.samples for f in merge_metrics([a, b], retired)}
    assert merged["tlsgate_connections"][0].value == 17  # 3 + 4 + 10 from a dead worker
    assert merged["tlsgate_certificate_generation"][0].value == 2


def _listener(active: int, accepted: int, closed: dict[str, int]) -> dict[str, Any]:
    return {
        "listen": "tcp:1", "listening": True, "certificates": [],
        "connections": {"active": active, "accepted": accepted,
                        "by_generation": {"1": active}, "closed": closed},
        "backends": [{"backend": "tcp:b:1", "connect_failures": 1}],
    }  # fmt: skip


def test_status_sums_connections_over_workers() -> None:
    merged = merge_status([
        {"listeners": {"web": _listener(1, 5, {"client": 4})}},
        {"listeners": {"web": _listener(2, 7, {"client": 1, "idle_timeout": 4})}},
    ])  # fmt: skip
    web = merged["web"]
    assert web["connections"]["active"] == 3
    assert web["connections"]["accepted"] == 12
    assert web["connections"]["closed"] == {"client": 5, "idle_timeout": 4}
    assert web["connections"]["by_generation"] == {"1": 3}
    assert web["backends"][0]["connect_failures"] == 2


# -- the supervisor, with fake processes ----------------------------------


@implementer(IForkServer)
class FakeForkServer:
    def __init__(self, setup: ForkServerSetup) -> None:
        self.setup = setup
        self.ended: Deferred[None] = Deferred()
        self.workers: list[tuple[int, IProtocol, StringTransport]] = []
        self.retired = False

    def spawn(self, slot: int, control: IProtocol) -> None:
        transport = StringTransport()
        control.makeConnection(transport)
        self.workers.append((slot, control, transport))

    def retire(self) -> None:
        self.retired = True


@implementer(ILauncher)
class FakeLauncher:
    def __init__(self) -> None:
        self.servers: list[FakeForkServer] = []

    def start(self, setup: ForkServerSetup, fds: dict[int, int]) -> IForkServer:
        server = FakeForkServer(setup)
        self.servers.append(server)
        return server


class FakePort:
    def stopListening(self) -> None:
        self.stopped = True


def _binder(reactor: object, listen: str, where: str) -> BoundSocket:
    return BoundSocket(FakePort(), 10, 2)  # type: ignore[arg-type]


def _config(workers: int = 2, **listener: Any) -> GatewayConfig:
    lc = ListenerConfig(name="web", listen="tcp:8443", backends=("tcp:b:1",),
                        cert="c.pem", **listener)  # fmt: skip
    return GatewayConfig(listeners=(lc,), workers=workers)


def _supervisor(
    workers: int = 2, drain_delay: float = 0.0
) -> tuple[SupervisorService, FakeLauncher, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    launcher = FakeLauncher()
    verifyObject(ILauncher, launcher)
    config = replace(_config(workers), drain_delay=drain_delay)
    s = SupervisorService(config, reactor, launcher, binder=_binder, rotate_every=0)
    s.startService()
    return s, launcher, reactor


def _hello(control: IProtocol, pid: int) -> None:
    control.dataReceived(
        json.dumps({"hello": {"pid": pid, "listening": ["web"]}}).encode() + b"\n"
    )  # type: ignore[attr-defined]


def _lose(control: IProtocol) -> None:
    control.connectionLost(Failure(ConnectionError()))


def _sent(transport: StringTransport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in transport.value().splitlines()]


def _retires(transport: StringTransport) -> list[int]:
    return [m["id"] for m in _sent(transport) if m.get("cmd") == "retire"]


def test_workers_start_and_readiness_waits_for_all() -> None:
    s, launcher, _ = _supervisor()
    (server,) = launcher.servers
    assert [slot for slot, _, _ in server.workers] == [0, 1]
    view = SupervisorView(s)
    assert view.readiness() == "workers not serving: 0, 1"
    _hello(server.workers[0][1], 100)
    assert view.readiness() == "workers not serving: 1"
    _hello(server.workers[1][1], 101)
    assert view.readiness() is None


def test_a_dead_worker_is_replaced_with_back_off() -> None:
    s, launcher, clock = _supervisor()
    (server,) = launcher.servers
    for i, (_, control, _) in enumerate(server.workers):
        _hello(control, 100 + i)
    _lose(server.workers[0][1])
    assert s.restarts == 1
    clock.advance(0)
    assert [slot for slot, _, _ in server.workers] == [0, 1, 0]
    _lose(server.workers[2][1])  # dies again at once: waits a second
    clock.advance(0.5)
    assert len(server.workers) == 3
    clock.advance(0.5)
    assert len(server.workers) == 4


def test_drain_fans_out_and_nothing_is_respawned() -> None:
    s, launcher, clock = _supervisor()
    (server,) = launcher.servers
    for i, (_, control, _) in enumerate(server.workers):
        _hello(control, 100 + i)
    stopped = s.stopService()
    for _, _, transport in server.workers:
        assert {"cmd": "drain"} in _sent(transport)
    assert SupervisorView(s).readiness() == "draining"
    for _, control, _ in server.workers:
        _lose(control)
    clock.advance(60)
    assert len(server.workers) == 2  # none replaced
    assert server.retired
    assert not stopped.called  # waits for the fork server to end
    server.ended.callback(None)
    assert stopped.called


def test_a_new_generation_replaces_the_old_once_it_serves() -> None:
    s, launcher, _ = _supervisor()
    old = launcher.servers[0]
    for i, (_, control, _) in enumerate(old.workers):
        _hello(control, 100 + i)
    s.apply(_config(2, sni_strict=True))
    new = launcher.servers[1]
    assert old.retired and new.setup.generation == 2
    _hello(new.workers[0][1], 150)  # one of two: the old ones keep accepting
    served: list[bool] = []
    s.apply(_config(2, sni_strict=False), lambda: served.append(True))
    third = launcher.servers[2]
    _hello(third.workers[0][1], 200)
    assert all(_retires(t) == [] for _, _, t in old.workers)
    _hello(third.workers[1][1], 201)
    # Generation 2 never served in every slot: it is retired with the first.
    for _, control, transport in [*old.workers, *new.workers]:
        (ident,) = _retires(transport)
        assert not served
        control.dataReceived(
            json.dumps({"id": ident, "accepting": False}).encode() + b"\n"
        )  # type: ignore[attr-defined]
    assert served == [True]  # the new config is announced once only it is served
    _lose(old.workers[0][1])
    assert s.restarts == 0  # a retired worker's exit is no death


def test_status_asks_every_worker_and_sums() -> None:
    s, launcher, _ = _supervisor()
    (server,) = launcher.servers
    for i, (_, control, _) in enumerate(server.workers):
        _hello(control, 100 + i)
    d = SupervisorView(s).status()
    for i, (_, control, transport) in enumerate(server.workers):
        (request,) = [m for m in _sent(transport) if m.get("cmd") == "report"]
        reply = {"id": request["id"], "metrics": [],
                 "status": {"listeners": {"web": _listener(i + 1, 10, {})}}}  # fmt: skip
        control.dataReceived(json.dumps(reply).encode() + b"\n")  # type: ignore[attr-defined]
    doc = d.result
    assert doc["listeners"]["web"]["connections"]["active"] == 3
    assert [w["pid"] for w in doc["workers"]] == [100, 101]
    assert doc["process"]["serving"] == 2


def test_worker_control_is_a_line_protocol() -> None:
    """A garbled line from a worker ends its control connection."""
    _, launcher, _ = _supervisor()
    control = launcher.servers[0].workers[0][1]
    assert isinstance(control, WorkerControl)
    transport = launcher.servers[0].workers[0][2]
    control.dataReceived(b"[1, 2]\n")
    assert transport.disconnecting


def test_a_new_generation_cancels_pending_replacements() -> None:
    """A slot waiting out its back-off is filled by the new generation, not twice."""
    s, launcher, clock = _supervisor()
    (server,) = launcher.servers
    for i, (_, control, _) in enumerate(server.workers):
        _hello(control, 100 + i)
    _lose(server.workers[0][1])
    clock.advance(0)
    _lose(server.workers[2][1])  # dies again: replaced in 1 s
    s.rotate()
    clock.advance(5)
    assert len(launcher.servers[1].workers) == 2
    assert len(server.workers) == 3


def test_ticket_keys_are_replaced_daily_by_a_new_generation() -> None:
    reactor = MemoryReactorClock()
    launcher = FakeLauncher()
    s = SupervisorService(_config(2), reactor, launcher, binder=_binder)
    s.startService()
    reactor.advance(24 * 3600 - 1)
    assert len(launcher.servers) == 1
    reactor.advance(1)
    assert len(launcher.servers) == 2 and launcher.servers[0].retired
    reactor.advance(24 * 3600)
    assert len(launcher.servers) == 3


def test_reuseport_sockets_share_one_address() -> None:
    """The SO_REUSEPORT alternative: one socket per slot, all on one address."""
    import socket

    from tlsgate.workers._sockets import _reuseport_socket

    first = _reuseport_socket(socket.AF_INET, ("127.0.0.1", 0))
    bound = BoundSocket(None, first.fileno(), socket.AF_INET, [first])
    try:
        fds = {bound.fd_for(slot) for slot in range(3)}
        assert len(fds) == 3
        names = set()
        for fd in fds:
            with socket.socket(fileno=os.dup(fd)) as s:
                names.add(s.getsockname())
        assert names == {first.getsockname()}
    finally:
        bound.close()


def test_readiness_needs_every_listener_served_in_every_slot() -> None:
    s, launcher, _ = _supervisor()
    (server,) = launcher.servers
    _hello(server.workers[0][1], 100)
    server.workers[1][1].dataReceived(  # type: ignore[attr-defined]
        json.dumps({"hello": {"pid": 101, "listening": []}}).encode() + b"\n"
    )
    assert SupervisorView(s).readiness() == "workers not serving: 1"


def test_the_service_manager_hears_ready_once_every_worker_serves() -> None:
    """
    Under systemd, C{READY=1} (and the watchdog) waits for every slot to
    serve; C{STOPPING=1} comes once, when the drain starts.
    """
    from tests.unit.test_drain_delay import Recorder

    s, launcher, _ = _supervisor()
    recorder = Recorder()
    s.notifier = recorder
    (server,) = launcher.servers
    _hello(server.workers[0][1], 100)
    assert recorder.said == []
    _hello(server.workers[1][1], 101)
    assert recorder.said == ["ready", "watchdog on"]
    s.drain()
    s.drain()
    assert recorder.said == ["ready", "watchdog on", "stopping"]


def test_drain_delay_keeps_every_worker_accepting_while_readyz_says_503() -> None:
    """
    With C{drain_delay}, readiness is false at once, but the shared sockets
    stay open (shutting one down stops every worker's copy) and no worker is
    told to drain until the delay has passed; then all of them are.
    """
    s, launcher, clock = _supervisor(drain_delay=2)
    (server,) = launcher.servers
    for i, (_, control, _) in enumerate(server.workers):
        _hello(control, 100 + i)
    (bound,) = s.sockets.values()
    s.drain()
    assert SupervisorView(s).readiness() == "draining"
    clock.advance(1.9)
    assert all({"cmd": "drain"} not in _sent(t) for _, _, t in server.workers)
    assert s.sockets and not server.retired
    clock.advance(0.1)
    assert all({"cmd": "drain"} in _sent(t) for _, _, t in server.workers)
    assert not s.sockets and server.retired
    assert getattr(bound.port, "stopped", False)


def test_a_workers_last_counts_and_generations_are_kept_when_it_exits() -> None:
    """
    A worker that drains and exits between two scrapes says what it counted
    on its way out; the gateway's counters keep it, and the next fork server
    numbers certificates on from the highest generation any worker reported.
    """
    s, launcher, _ = _supervisor()
    (server,) = launcher.servers
    _hello(server.workers[0][1], 100)
    sample = ["tlsgate_connections_total", {"listener": "web"}, 7.0]
    final = {"metrics": [{"name": "tlsgate_connections", "documentation": "",
                          "type": "counter", "samples": [sample]}],
             "generations": {"web": 3}}  # fmt: skip
    server.workers[0][1].dataReceived(json.dumps({"final": final}).encode() + b"\n")  # type: ignore[attr-defined]
    _lose(server.workers[0][1])
    assert sum(s.retired.values()) == 7.0
    s.apply(_config(2, sni_strict=True))
    assert launcher.servers[-1].setup.first_generation == {"web": 4}


def test_a_sighup_while_draining_is_refused_and_starts_nothing() -> None:
    s, launcher, _ = _supervisor()
    s.drain()
    with pytest.raises(TlsgateError):
        s.apply(_config(2, sni_strict=True))
    s.rotate()
    assert len(launcher.servers) == 1
