"""
What the connection tracker costs: memory per connection, time per chunk,
and timer wake-ups of idle connections.

    PYTHONPATH=src python bench/tracker_cost.py [--connections 10000]

Connections are built through the real tracker on a StringTransport with a
task.Clock, so the figures are the tracker's own, without sockets or TLS.
"""

from __future__ import annotations

import argparse
import gc
import sys
import timeit
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tlsgate.tracker import ConnectionTracker, Limits


class Transport(StringTransport):
    """Tolerates unregistering no producer, as TCP and TLS transports do."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class App(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


def open_connections(
    n: int, tracked: bool, limits: Limits, clock: Clock
) -> list[object]:
    factory: object = (
        ConnectionTracker(Factory.forProtocol(App), limits, clock)
        if tracked
        else Factory.forProtocol(App)
    )
    keep = []
    for i in range(n):
        addr = IPv4Address("TCP", f"10.0.{i // 250}.{i % 250}", 40000)
        p = factory.buildProtocol(addr)  # type: ignore[attr-defined]
        t = Transport(lenient=True)
        p.makeConnection(t)
        keep.append((p, t))
    return keep


def memory_per_connection(n: int, limits: Limits) -> tuple[float, float]:
    results = []
    for tracked in (False, True):
        gc.collect()
        tracemalloc.start()
        clock = Clock()
        before = tracemalloc.get_traced_memory()[0]
        keep = open_connections(n, tracked, limits, clock)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        results.append((after - before) / n)
        del keep
    return results[0], results[1]


def chunk_cost(limits: Limits) -> tuple[float, float]:
    clock = Clock()
    ((plain, _),) = open_connections(1, False, limits, clock)  # type: ignore[misc]
    ((tracked, _),) = open_connections(1, True, limits, clock)  # type: ignore[misc]
    data = b"x" * 16384
    n = 1_000_000
    t_plain = (
        min(timeit.repeat(lambda: plain.dataReceived(data), number=n, repeat=3)) / n
    )
    t_tracked = (
        min(timeit.repeat(lambda: tracked.dataReceived(data), number=n, repeat=3)) / n
    )
    return t_plain * 1e9, t_tracked * 1e9


def setup_cost(limits: Limits, n: int = 20000) -> tuple[float, float]:
    """Accept-to-close of one connection (build, connect, lose), in ns."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    clock = Clock()
    done = Failure(ConnectionDone())
    addr = IPv4Address("TCP", "10.0.0.1", 40000)
    results = []
    for tracked in (False, True):
        factory: object = (
            ConnectionTracker(Factory.forProtocol(App), limits, clock)
            if tracked
            else Factory.forProtocol(App)
        )

        def cycle(factory: object = factory) -> None:
            p = factory.buildProtocol(addr)  # type: ignore[attr-defined]
            p.makeConnection(Transport(lenient=True))
            p.connectionLost(done)

        results.append(min(timeit.repeat(cycle, number=n, repeat=5)) / n * 1e9)
    return results[0], results[1]


def idle_wakeups(n: int) -> dict[str, int]:
    out = {}
    for label, limits in (
        ("no idle_timeout, no max_lifetime", Limits(idle_timeout=0, max_lifetime=0)),
        ("idle_timeout=5m", Limits(idle_timeout=300, max_lifetime=0, close_grace=0)),
    ):
        clock = Clock()
        tracker = ConnectionTracker(Factory.forProtocol(App), limits, clock)
        for i in range(n):
            p = tracker.buildProtocol(
                IPv4Address("TCP", f"10.1.{i // 250}.{i % 250}", 1)
            )
            p.makeConnection(Transport(lenient=True))  # type: ignore[union-attr]
        calls = 0
        for _ in range(3600):  # one hour of silence, second by second
            due = [
                c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds() + 1
            ]
            calls += len(due)
            clock.advance(1)
        out[label] = calls
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=10000)
    args = parser.parse_args()
    n = args.connections
    limits = Limits(idle_timeout=300, max_lifetime=3600)
    plain, tracked = memory_per_connection(n, limits)
    print(f"memory per connection, {n} connections (StringTransport + protocol):")
    print(f"  without tracker: {plain:8.0f} B")
    print(
        f"  with tracker:    {tracked:8.0f} B   (tracker adds {tracked - plain:.0f} B)"
    )
    p, t = chunk_cost(limits)
    print("time per 16 KiB chunk delivered to the application:")
    print(f"  without tracker: {p:6.0f} ns")
    print(f"  with tracker:    {t:6.0f} ns   (tracker adds {t - p:.0f} ns)")
    p, t = setup_cost(limits)
    print("time per connection, accept to close (build, connect, lose):")
    print(f"  without tracker: {p:6.0f} ns")
    print(f"  with tracker:    {t:6.0f} ns   (tracker adds {t - p:.0f} ns)")
    print(f"timer callbacks over one silent hour, {n} connections:")
    for label, calls in idle_wakeups(n).items():
        print(f"  {label}: {calls}")


if __name__ == "__main__":
    main()
