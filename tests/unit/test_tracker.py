"""
The connection tracker, with a C{task.Clock}: every limit, the graceful-close
ordering, caps, rotation and drain.

Most tests use a C{StringTransport} that claims to be TLS (C{INegotiated}), so
the tracker believes a handshake is pending until told it completed; the
ordering test runs the whole TLS client -> tracker -> relay -> backend path in
memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener, INegotiated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from zope.interface import alsoProvides, implementer

from tests.unit.test_relay import FakeEndpoint, Recorder, pump_all
from tlsgate.certs import ReloadingContextFactory
from tlsgate.relay import Backend, BackendPool, RelayFactory
from tlsgate.testing import CertificateAuthority, CertificateFiles, connect_tls
from tlsgate.tracker import (
    QUIET_INTERVAL,
    CloseReason,
    ConnectionTracker,
    Limits,
    TrackedProtocol,
)


@implementer(IHandshakeListener)
class App(Protocol):
    """An application protocol that records what reaches it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False
        self.handshakes = 0
        self.close_reason: CloseReason | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object) -> None:
        self.lost = True

    def handshakeCompleted(self) -> None:
        self.handshakes += 1


class Transport(StringTransport):
    """StringTransport, tolerant of unregistering no producer as TCP and TLS are."""

    aborted = False

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Port:
    """A listening port that records accept pauses."""

    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def tracker_for(clock: Clock, **limits: Any) -> ConnectionTracker:
    limits.setdefault("handshake_timeout", 10)
    limits.setdefault("idle_timeout", 0)
    return ConnectionTracker(
        Factory.forProtocol(App), Limits(**limits), clock, random=lambda: 0.5
    )


def connect(
    tracker: ConnectionTracker, host: str = "192.0.2.1", *, tls: bool = True,
    handshake: bool = True,
) -> tuple[TrackedProtocol, Transport]:  # fmt: skip
    protocol = tracker.buildProtocol(IPv4Address("TCP", host, 40000))
    assert protocol is not None
    transport = Transport()
    if tls:
        alsoProvides(transport, INegotiated)
    protocol.makeConnection(transport)
    if tls and handshake and isinstance(protocol, TrackedProtocol):
        protocol.handshakeCompleted()
    return protocol, transport  # type: ignore[return-value]


def run(clock: Clock, seconds: float, step: float = 0.5) -> None:
    """Advance in steps, as a real reactor's timers fire on time."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def close(protocol: Any) -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    protocol.connectionLost(Failure(ConnectionDone()))


def test_silent_client_is_dropped_at_the_handshake_timeout() -> None:
    """A client that never completes the handshake is aborted, reason handshake_timeout."""
    clock = Clock()
    tracker = tracker_for(clock, handshake_timeout=10)
    protocol, transport = connect(tracker, handshake=False)
    run(clock, 9.5)
    assert not transport.aborted
    run(clock, 1.5)  # within one wheel tick (1 s) of the deadline
    assert transport.aborted
    close(protocol)
    assert tracker.closed == {CloseReason.HANDSHAKE_TIMEOUT: 1}


def test_completed_handshake_cancels_the_timeout_and_reaches_the_app() -> None:
    clock = Clock()
    tracker = tracker_for(clock, handshake_timeout=10)
    protocol, transport = connect(tracker)
    clock.advance(60)
    assert not transport.aborted
    assert protocol.wrapped.handshakes == 1  # type: ignore[attr-defined]


def test_idle_connection_is_closed_gracefully_after_idle_timeout() -> None:
    """No byte either way for idle_timeout: close_notify, never early, within 1 s late."""
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=100)
    protocol, transport = connect(tracker)
    run(clock, 99.5)
    assert not transport.disconnecting
    run(clock, 1.5)  # within one resolution tick (1 s) of the deadline
    assert transport.disconnecting and not transport.aborted  # close_notify sent
    close(protocol)
    assert tracker.closed == {CloseReason.IDLE_TIMEOUT: 1}


def test_traffic_either_way_keeps_a_connection_alive() -> None:
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=100)
    protocol, transport = connect(tracker)
    for i in range(20):
        clock.advance(60)
        if i % 2:
            protocol.dataReceived(b"ping")
        else:
            protocol.write(b"pong")
    assert not transport.disconnecting
    assert (protocol.bytes_in, protocol.bytes_out) == (40, 40)


def test_idle_connections_cost_no_timers_without_limits() -> None:
    """With no idle or lifetime limit, an open connection schedules nothing."""
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=0, max_lifetime=0)
    for _ in range(100):
        connect(tracker)
    run(clock, 1)  # the handshake deadlines' last tick finds nothing left to watch
    assert clock.getDelayedCalls() == []
    run(clock, 3600)
    assert clock.getDelayedCalls() == []


def test_no_timer_per_connection_with_limits() -> None:
    """Deadlines live in the tracker's wheel: one ticker, whatever the count."""
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=300, max_lifetime=3600)
    for _ in range(100):
        connect(tracker)
    assert len(clock.getDelayedCalls()) == 1


def test_idle_connections_are_looked_at_once_when_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle connection is visited only when its deadline comes: no polling."""
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=300, close_grace=0)
    protocols = [connect(tracker)[0] for _ in range(50)]
    visits: list[float] = []
    real = TrackedProtocol._due
    monkeypatch.setattr(
        TrackedProtocol,
        "_due",
        lambda self, now: (visits.append(now), real(self, now))[1],
    )
    run(clock, 299)
    assert visits == []
    run(clock, 2.5)
    assert len(visits) == 50 and all(p.closing for p in protocols)


def test_busy_connection_is_refiled_not_closed() -> None:
    """Traffic moves the idle deadline; the wheel re-files the connection."""
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=10)
    p, _transport = connect(tracker)
    for _ in range(10):
        run(clock, 5)
        p.dataReceived(b"x")
    assert not p.closing
    run(clock, 12)
    assert p.closing and p.reason is CloseReason.IDLE_TIMEOUT


def test_coarse_clock_stops_when_no_connection_is_left() -> None:
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=10)
    p, _ = connect(tracker)
    close(p)
    run(clock, 2)
    assert clock.getDelayedCalls() == []


def test_lifetime_closes_a_busy_connection_with_jitter() -> None:
    """max_lifetime x (1 - jitter x random): 100s, 10%, random 0.5 -> 95s."""
    clock = Clock()
    tracker = tracker_for(clock, max_lifetime=100, lifetime_jitter=0.1, close_grace=5)
    protocol, transport = connect(tracker)
    for _ in range(94):
        clock.advance(1)
        protocol.dataReceived(b"x")
        protocol.write(b"y")
    assert not protocol.closing
    for _ in range(100):
        if protocol.closing:
            break
        clock.advance(0.02)
    assert clock.seconds() < 96.1  # 95 s, within one wheel tick
    assert protocol.closing and protocol.reason is CloseReason.LIFETIME
    assert transport.producerState == "paused"  # no new request is read


def test_graceful_close_waits_for_a_quiet_point() -> None:
    """Bytes still coming from the backend are delivered before close_notify."""
    clock = Clock()
    tracker = tracker_for(clock, max_lifetime=10, lifetime_jitter=0, close_grace=5)
    protocol, transport = connect(tracker)
    protocol.dataReceived(b"request")  # answer pending
    clock.advance(10)
    assert protocol.closing and not transport.disconnecting
    clock.advance(QUIET_INTERVAL / 2)
    protocol.write(b"response part 1")
    clock.advance(QUIET_INTERVAL)
    protocol.write(b"response part 2")
    clock.advance(QUIET_INTERVAL)
    assert not transport.disconnecting
    clock.advance(QUIET_INTERVAL)
    assert transport.disconnecting  # close_notify after the last part
    assert transport.value().endswith(b"response part 2")


def test_backend_resuming_the_client_cannot_reopen_reads_while_closing() -> None:
    """The tracker keeps reads paused during a graceful close, whatever producers say."""
    clock = Clock()
    tracker = tracker_for(clock, max_lifetime=10, lifetime_jitter=0)
    protocol, transport = connect(tracker)
    clock.advance(10)
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.producerState == "paused"


def test_unanswered_close_notify_is_aborted_after_close_grace() -> None:
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=10, close_grace=5)
    _protocol, transport = connect(tracker)
    run(clock, 13)
    assert transport.disconnecting and not transport.aborted
    clock.advance(5)
    assert transport.aborted


def test_a_busy_stream_is_closed_after_close_grace_at_most() -> None:
    """A stream with no quiet point still ends: close_grace bounds the wait."""
    clock = Clock()
    tracker = tracker_for(clock, max_lifetime=10, lifetime_jitter=0, close_grace=2)
    protocol, transport = connect(tracker)
    clock.advance(10)
    for _ in range(int(2 / 0.01)):
        protocol.write(b"frame")
        clock.advance(0.01)
    clock.advance(QUIET_INTERVAL)
    assert transport.disconnecting


def test_max_connections_pauses_accepting_and_resumes() -> None:
    """Beyond max_connections new connections wait in the backlog."""
    clock = Clock()
    tracker = tracker_for(clock, max_connections=2)
    port = Port()
    tracker.port = port  # type: ignore[assignment]
    first, _ = connect(tracker)
    connect(tracker)
    assert not port.reading
    close(first)
    assert port.reading


def test_max_connections_without_a_port_refuses() -> None:
    clock = Clock()
    tracker = tracker_for(clock, max_connections=1)
    connect(tracker)
    refused, transport = connect(tracker, handshake=False)
    assert not isinstance(refused, TrackedProtocol)
    assert transport.aborted
    assert tracker.closed == {CloseReason.LIMIT: 1}


def test_per_client_cap_refuses_the_extra_connection_only() -> None:
    clock = Clock()
    tracker = tracker_for(clock, max_connections_per_client=2)
    a, _ = connect(tracker, "192.0.2.1")
    connect(tracker, "192.0.2.1")
    with capturedLogs() as events:
        _, extra = connect(tracker, "192.0.2.1", handshake=False)
        for _ in range(20):  # a client hammering at its cap: counted, logged once
            connect(tracker, "192.0.2.1", handshake=False)
    _, other = connect(tracker, "192.0.2.2")
    assert extra.aborted and not other.aborted
    assert len([e for e in events if e.get("event") == "connection_refused"]) == 1
    close(a)
    _, again = connect(tracker, "192.0.2.1")
    assert not again.aborted
    assert tracker.closed[CloseReason.LIMIT] == 21


def test_rotation_closes_older_generations_within_the_grace() -> None:
    """Connections made under generation 1 are closed after the switch to 2."""
    clock = Clock()
    generation = [1]
    tracker = ConnectionTracker(
        Factory.forProtocol(App), Limits(idle_timeout=0, rotation_grace=600), clock,
        generation=lambda: generation[0], random=lambda: 0.5,
    )  # fmt: skip
    old, _ = connect(tracker)
    generation[0] = 2
    new, _ = connect(tracker)
    state: Any = type("State", (), {"generation": 2})()
    tracker.certificate_changed(state)
    clock.advance(299)
    assert not old.closing
    clock.advance(2)
    assert old.closing and old.reason is CloseReason.ROTATION
    assert not new.closing
    assert tracker.by_generation() == {1: 1, 2: 1}


def test_rotation_off_leaves_connections_alone() -> None:
    clock = Clock()
    tracker = tracker_for(clock)
    old, _ = connect(tracker)
    tracker.certificate_changed(type("S", (), {"generation": 5})())  # type: ignore[arg-type]
    clock.advance(10_000)
    assert not old.closing


def test_drain_waits_for_connections_then_closes_the_rest() -> None:
    """drain: refuse new ones, wait drain_timeout, close the rest with reason drain."""
    clock = Clock()
    tracker = tracker_for(clock, close_grace=5)
    a, _ = connect(tracker)
    b, b_transport = connect(tracker)
    done = tracker.drain(30)
    _, refused = connect(tracker, handshake=False)
    assert refused.aborted
    close(a)
    assert not done.called
    clock.advance(30)
    assert b.closing and b.reason is CloseReason.DRAIN
    clock.advance(QUIET_INTERVAL)
    assert b_transport.disconnecting
    close(b)
    assert done.called
    assert tracker.closed == {CloseReason.CLIENT: 1, CloseReason.DRAIN: 2}


def test_a_second_drain_with_a_shorter_limit_wins() -> None:
    """A worker retired with a long limit, then stopped: drain_timeout applies."""
    clock = Clock()
    tracker = tracker_for(clock)
    held, _ = connect(tracker)
    tracker.drain(3600)
    clock.advance(10)
    tracker.drain(5)
    tracker.drain(60)  # a longer one does not extend it
    clock.advance(5)
    assert held.closing and held.reason is CloseReason.DRAIN


def test_a_drain_is_logged_once_when_it_starts() -> None:
    clock = Clock()
    tracker = tracker_for(clock)
    connect(tracker)
    with capturedLogs() as first:
        tracker.drain(3600)
    with capturedLogs() as later:
        tracker.drain(5)  # a shorter limit later: not a second start
    started = [e for e in first if e.get("event") == "drain_started"]
    assert len(started) == 1 and started[0]["count"] == 1
    assert not [e for e in later if e.get("event") == "drain_started"]


def test_drain_with_nothing_open_fires_at_once() -> None:
    assert tracker_for(Clock()).drain(30).called


def test_close_reasons_from_the_app_and_tls() -> None:
    from OpenSSL import SSL
    from twisted.python.failure import Failure

    clock = Clock()
    tracker = tracker_for(clock)
    p, _ = connect(tracker)
    p.wrapped.close_reason = CloseReason.BACKEND  # type: ignore[attr-defined]
    close(p)
    q, _ = connect(tracker, handshake=False)
    q.connectionLost(Failure(SSL.Error("bad record mac")))
    assert tracker.closed == {CloseReason.BACKEND: 1, CloseReason.TLS_ERROR: 1}


def test_snapshot_lists_live_connections() -> None:
    clock = Clock()
    tracker = tracker_for(clock, idle_timeout=100)
    p, _ = connect(tracker, "192.0.2.9")
    p.dataReceived(b"12345")
    clock.advance(7)
    (info,) = tracker.snapshot()
    assert info.peer == "192.0.2.9" and info.age == 7 and info.bytes_in == 5
    assert info.idle == 7
    assert info.generation == 0 and not info.closing


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ReloadingContextFactory, CertificateAuthority]:
    ca = CertificateAuthority()
    files = CertificateFiles(tmp_path, ca.issue())
    return ReloadingContextFactory(str(files.cert), str(files.key)), ca


def test_lifetime_close_over_real_tls_delivers_the_answer_before_close_notify(
    contexts: tuple[ReloadingContextFactory, CertificateAuthority],
) -> None:
    """
    Through TLS, tracker and relay: a lifetime close that lands while an answer
    is being written lets the answer arrive whole, then the client sees a clean
    TLS close; a request sent after the close began never reaches the backend.
    """
    factory, ca = contexts
    clock = Clock()
    endpoint = FakeEndpoint(Recorder)
    pool = BackendPool([Backend("b", endpoint)], clock)
    tracker = ConnectionTracker(
        RelayFactory(pool), Limits(max_lifetime=10, lifetime_jitter=0, close_grace=5),
        clock, random=lambda: 0.0,
    )  # fmt: skip
    client = Recorder()
    pump = connect_tls(
        tracker,
        client,
        contexts=factory,
        trust=ca.cert_pem,
        clock=clock,
        peer="10.0.0.1",
    ).pump
    backend = endpoint.succeed()
    client.transport.write(b"GET /1")  # type: ignore[union-attr]
    pump_all(pump, *endpoint.pumps)
    assert backend.received == b"GET /1"
    clock.advance(10)  # lifetime: the close begins while /1 is unanswered
    client.transport.write(b"GET /2")  # type: ignore[union-attr]
    backend.transport.write(b"answer to /1, part one; ")  # type: ignore[union-attr]
    pump_all(pump, *endpoint.pumps)
    clock.advance(QUIET_INTERVAL / 2)
    backend.transport.write(b"part two")  # type: ignore[union-attr]
    pump_all(pump, *endpoint.pumps)
    for _ in range(4):
        clock.advance(QUIET_INTERVAL)
        pump_all(pump, *endpoint.pumps)
    assert client.received == b"answer to /1, part one; part two"
    assert client.lost
    assert backend.received == b"GET /1"  # /2 was never read
    assert tracker.closed == {CloseReason.LIFETIME: 1}


def test_tcp_health_check_before_the_handshake_is_a_client_close() -> None:
    """Connect-and-leave (HAProxy 'check' without check-ssl) is not a TLS error."""
    clock = Clock()
    tracker = tracker_for(clock)
    p, _ = connect(tracker, handshake=False)
    close(p)
    assert tracker.closed == {CloseReason.CLIENT: 1}


def test_connections_of_the_same_accept_batch_are_admitted_not_reset() -> None:
    """Twisted accepts in batches; a pause cannot recall what it already accepted."""
    clock = Clock()
    tracker = tracker_for(clock, max_connections=2)
    tracker.port = Port()  # type: ignore[assignment]
    connect(tracker)
    connect(tracker)
    late, transport = connect(tracker)  # accepted in the same batch as the 2nd
    assert isinstance(late, TrackedProtocol) and not transport.aborted
    assert tracker.closed[CloseReason.LIMIT] == 0
