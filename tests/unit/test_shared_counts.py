"""
Gateway-wide caps over worker processes: two trackers (two workers) over one
shared count region hold max_connections and max_connections_per_client
together, and a worker paused at the cap resumes when another worker's
connection closes.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from tests.unit.test_tracker import App, Port, close, connect
from tlsgate.tracker import ConnectionTracker, Limits, SharedCounts, TrackedProtocol


def _workers(
    clock: Clock, **limits: Any
) -> tuple[ConnectionTracker, ConnectionTracker]:
    counts = SharedCounts(["web"], slots=2, buckets=64)
    limits.setdefault("idle_timeout", 0)
    return tuple(  # type: ignore[return-value]
        ConnectionTracker(
            Factory.forProtocol(App),
            Limits(**limits),
            clock,
            shared=counts.for_worker("web", slot),
        )
        for slot in (0, 1)
    )


def test_a_client_spread_over_workers_gets_its_cap_once() -> None:
    clock = Clock()
    a, b = _workers(clock, max_connections_per_client=2)
    first, _ = connect(a, "192.0.2.1")
    connect(b, "192.0.2.1")
    refused, transport = connect(a, "192.0.2.1", handshake=False)
    assert not isinstance(refused, TrackedProtocol) and transport.aborted
    _, other = connect(b, "192.0.2.2")
    assert not other.aborted
    close(first)
    _, again = connect(b, "192.0.2.1")
    assert not again.aborted


def test_max_connections_holds_over_workers_and_resumes() -> None:
    clock = Clock()
    a, b = _workers(clock, max_connections=2)
    port_a, port_b = Port(), Port()
    a.port, b.port = port_a, port_b  # type: ignore[assignment]
    first, _ = connect(a)
    connect(b)
    assert not port_b.reading  # the gateway is at its cap
    assert a.shared is not None and a.shared.total() == 2
    close(first)  # room made in worker a: b notices within 50 ms
    clock.advance(0.05)
    assert port_b.reading


def test_a_replaced_worker_starts_from_zero() -> None:
    counts = SharedCounts(["web"], slots=2, buckets=64)
    mine = counts.for_worker("web", 1)
    mine.opened("192.0.2.1")
    assert counts.for_worker("web", 0).of("192.0.2.1") == 1
    counts.for_worker("web", 1)  # its replacement
    assert mine.total() == 0 and mine.of("192.0.2.1") == 0


def test_a_worker_finding_the_cap_reached_elsewhere_pauses_not_resets() -> None:
    """Over by at most one connection per worker, and nobody is reset."""
    clock = Clock()
    a, b = _workers(clock, max_connections=2)
    port_a, port_b = Port(), Port()
    a.port, b.port = port_a, port_b  # type: ignore[assignment]
    connect(a)
    connect(a)
    assert not port_a.reading and port_b.reading  # b has not accepted since
    late, transport = connect(b)
    assert isinstance(late, TrackedProtocol) and not transport.aborted
    assert not port_b.reading
    assert b.shared is not None and b.shared.total() == 3


def test_a_new_generation_counts_the_connections_older_workers_still_hold() -> None:
    """
    Workers replaced by a SIGHUP keep their connections: the next
    generation's region is its own, but its workers read the older one too,
    through another mapping of the same memory (as a new fork server does).
    """
    old = SharedCounts(["web"], slots=2, buckets=64)
    retired = old.for_worker("web", 0)
    retired.opened("192.0.2.1")
    retired.opened("192.0.2.1")
    new = SharedCounts(["web", "api"], slots=2, buckets=64)
    inherited = SharedCounts.mapped(old.layout, os.dup(old.fd))
    mine = new.for_worker("web", 1, older=[inherited])
    mine.opened("192.0.2.1")
    assert mine.total() == 3 and mine.of("192.0.2.1") == 3
    retired.closed("192.0.2.1")
    assert mine.total() == 2 and mine.of("192.0.2.1") == 2
    # A listener the older generation did not have counts only its own.
    assert new.for_worker("api", 0, older=[inherited]).total() == 0
    for region in (inherited, new, old):
        region.close()
