"""
The supervisor's decisions, as pure functions and small value objects:
when to replace a worker that died, and how worker reports add up to one
gateway. No processes, no reactor: tested on their own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric

#: Families whose samples are the same thing seen from every worker (the
#: certificate served): the gateway's value is the largest, not the sum.
MAX_FAMILIES = frozenset(
    {"tlsgate_certificate_generation", "tlsgate_certificate_not_after_seconds"}
)


@dataclass
class Backoff:
    """
    How long to wait before replacing a worker that died.

    The first death in a while is replaced at once; a worker that keeps
    dying within C{window} seconds of being started is replaced after 1, 2,
    4 ... seconds, at most C{ceiling}, so a worker that cannot start (a bad
    certificate, a bug) does not spin the machine.
    """

    window: float = 60.0
    ceiling: float = 30.0
    _streak: dict[int, int] = field(default_factory=dict)

    def died(self, slot: int, lived: float) -> float:
        """Worker C{slot} died after C{lived} seconds: the delay before its replacement."""
        if lived >= self.window:
            self._streak[slot] = 0
        streak = self._streak.get(slot, 0)
        self._streak[slot] = streak + 1
        return 0.0 if streak == 0 else min(self.ceiling, 2.0 ** (streak - 1))


SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _key(name: str, labels: Mapping[str, str]) -> SampleKey:
    return name, tuple(sorted(labels.items()))


def counter_samples(report: Iterable[Mapping[str, Any]]) -> dict[SampleKey, float]:
    """The counter samples of one worker's metrics report, by name and labels."""
    out: dict[SampleKey, float] = {}
    for family in report:
        if family["type"] == "counter":
            for name, labels, value in family["samples"]:
                out[_key(name, labels)] = float(value)
    return out


def merge_metrics(
    reports: Iterable[Iterable[Mapping[str, Any]]],
    retired: Mapping[SampleKey, float] | None = None,
) -> list[Metric]:
    """
    One gateway's metric families from every worker's report.

    Samples with the same name and labels are summed (connections, bytes,
    handshakes...), except L{MAX_FAMILIES}. C{retired} holds the counters
    of workers that have ended, as last reported, so that a counter does
    not go down when a worker is replaced.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    retired = dict(retired or {})
    for report in reports:
        for family in report:
            name = family["name"]
            if name not in families:
                families[name] = Metric(name, family["documentation"], family["type"])
                values[name] = {}
            merged = values[name]
            for sample_name, labels, value in family["samples"]:
                key = _key(sample_name, labels)
                if name in MAX_FAMILIES:
                    merged[key] = max(merged.get(key, float(value)), float(value))
                else:
                    merged[key] = merged.get(key, 0.0) + float(value)
    for merged in values.values():
        for key in merged:
            if key in retired:
                merged[key] += retired.pop(key)
    out: list[Metric] = []
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        out.append(metric)
    return out


def merge_status(workers: list[Mapping[str, Any]]) -> dict[str, Any]:
    """
    The listeners of C{/status} for the whole gateway: connection counts
    (and handshakes by key exchange group) summed over workers; certificates and backends as the first worker
    reports them (every worker serves the same files), backend failures
    summed.
    """
    listeners: dict[str, Any] = {}
    for status in workers:
        for name, lsn in status.get("listeners", {}).items():
            mine = listeners.get(name)
            if mine is None:
                listeners[name] = copy.deepcopy(lsn)
                continue
            mine["listening"] = mine["listening"] and lsn["listening"]
            conns, theirs = mine["connections"], lsn["connections"]
            conns["active"] += theirs["active"]
            conns["accepted"] += theirs["accepted"]
            for key in ("by_generation", "by_group", "closed"):
                _add(conns.setdefault(key, {}), theirs.get(key, {}))
            if "tls" in mine and "tls" in lsn:
                _add(
                    mine["tls"].setdefault("handshakes_by_group", {}),
                    lsn["tls"].get("handshakes_by_group", {}),
                )
            failures = {b["backend"]: b["connect_failures"] for b in lsn["backends"]}
            for b in mine["backends"]:
                b["connect_failures"] += failures.get(b["backend"], 0)
    return listeners


def _add(into: dict[str, Any], counts: Mapping[str, Any]) -> None:
    for k, n in counts.items():
        into[k] = into.get(k, 0) + n
