"""
Prometheus metrics, collected from the live gateway at scrape time.

A custom collector reads the tracker's, context factory's and backend pool's
own counters when Prometheus scrapes, so metrics add nothing to the
connection path: no metric object is touched per connection or per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from tlsgate.tracker import CloseReason

if TYPE_CHECKING:
    from tlsgate._gateway import Listener

Listeners = Callable[[], Mapping[str, "Listener"]]


class GatewayCollector:
    """Yields every C{tlsgate_*} metric of the interface, per listener."""

    def __init__(self, listeners: Listeners) -> None:
        self._listeners = listeners

    def describe(self) -> list[Metric]:
        return []  # the metrics exist only at collect time

    def collect(self) -> Iterator[Metric]:
        L = ["listener"]
        active = GaugeMetricFamily(
            "tlsgate_connections_active", "Open client connections.", labels=L
        )
        by_generation = GaugeMetricFamily(
            "tlsgate_connections_by_generation",
            "Open client connections by the certificate generation they were made"
            " under; current is no for generations older than the one served.",
            labels=[*L, "generation", "current"],
        )
        total = CounterMetricFamily(
            "tlsgate_connections", "Client connections accepted.", labels=L
        )
        closed = CounterMetricFamily(
            "tlsgate_connections_closed", "Client connections closed, by reason.",
            labels=[*L, "reason"],
        )  # fmt: skip
        handshakes = CounterMetricFamily(
            "tlsgate_handshakes", "TLS handshakes, by result and resumption.",
            labels=[*L, "result", "resumed"],
        )  # fmt: skip
        by_group = CounterMetricFamily(
            "tlsgate_handshakes_by_group",
            "Completed TLS handshakes by key exchange group (none: a TLS 1.2"
            " resumption); X25519MLKEM768 is post-quantum.",
            labels=[*L, "group"],
        )
        traffic = CounterMetricFamily(
            "tlsgate_bytes", "Application bytes relayed, from (in) and to (out) clients.",
            labels=[*L, "direction"],
        )  # fmt: skip
        reloads = CounterMetricFamily(
            "tlsgate_certificate_reloads", "Certificate reloads after a file change.",
            labels=[*L, "result"],
        )  # fmt: skip
        generation = GaugeMetricFamily(
            "tlsgate_certificate_generation", "Generation of the certificate served.",
            labels=L,
        )  # fmt: skip
        not_after = GaugeMetricFamily(
            "tlsgate_certificate_not_after_seconds",
            "Expiry of the certificate served, in seconds since the epoch.",
            labels=[*L, "fingerprint"],
        )
        backend_failures = CounterMetricFamily(
            "tlsgate_backend_connect_failures", "Failed backend connection attempts.",
            labels=[*L, "backend"],
        )  # fmt: skip
        for name, listener in sorted(self._listeners().items()):
            tracker, contexts, pool = listener.tracker, listener.contexts, listener.pool
            active.add_metric([name], len(tracker.connections))
            serving = contexts.generation
            for gen, count in sorted(tracker.by_generation().items()):
                current = "yes" if gen == serving else "no"
                by_generation.add_metric([name, str(gen), current], count)
            total.add_metric([name], tracker.accepted + tracker.refused)
            for reason in CloseReason:
                closed.add_metric([name, reason.value], tracker.closed[reason])
            handshakes.add_metric([name, "ok", "no"], tracker.handshakes_full)
            handshakes.add_metric([name, "ok", "yes"], tracker.handshakes_resumed)
            handshakes.add_metric([name, "failed", "no"], tracker.handshakes_failed)
            for group, count in sorted(tracker.handshakes_by_group.items()):
                by_group.add_metric([name, group], count)
            bytes_in, bytes_out = tracker.bytes_total()
            traffic.add_metric([name, "in"], bytes_in)
            traffic.add_metric([name, "out"], bytes_out)
            reloads.add_metric([name, "ok"], contexts.reloads_ok)
            reloads.add_metric([name, "failed"], contexts.reloads_failed)
            state = contexts.state
            generation.add_metric([name], state.generation)
            material = state.material
            not_after.add_metric(
                [name, material.fingerprint_sha256], material.not_after.timestamp()
            )
            sni_entries = listener.sni.entries.values() if listener.sni else ()
            for entry in sni_entries:
                sni_material = entry.factory.state.material
                not_after.add_metric(
                    [name, sni_material.fingerprint_sha256],
                    sni_material.not_after.timestamp(),
                )
            for backend in pool.backends:
                backend_failures.add_metric(
                    [name, backend.description],
                    pool.connect_failures[backend.description],
                )
        yield from (
            active, by_generation, total, closed, handshakes, by_group, traffic, reloads,
            generation, not_after, backend_failures,
        )  # fmt: skip


def make_registry(listeners: Listeners) -> CollectorRegistry:
    """A registry of the gateway's metrics alone (not the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(listeners))
    return registry
