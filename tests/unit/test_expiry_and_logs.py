"""Expiry warnings (30/7/1 days, once each) and the JSON log line format."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import trustme
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs, globalLogPublisher

from tests.helpers import make_pair, utcnow, write, write_atomically
from tlsgate.certs import ReloadingContextFactory
from tlsgate.certs._expiry import ExpiryWarnings, threshold_reached
from tlsgate.logs import STABLE_KEYS, format_json_line, json_observer


def test_thresholds() -> None:
    assert threshold_reached(45) is None
    assert threshold_reached(30) == 30
    assert threshold_reached(6.5) == 7
    assert threshold_reached(0.5) == 1
    assert threshold_reached(-3) == 1


def watcher(tmp_path: Path, days: float) -> tuple[ExpiryWarnings, Clock, list[float]]:
    now = utcnow()
    pair = make_pair(trustme.CA(), not_before=now - datetime.timedelta(days=1),
                     not_after=now + datetime.timedelta(days=days))  # fmt: skip
    write(tmp_path / "c.pem", pair.chain)
    write(tmp_path / "k.pem", pair.key)
    contexts = ReloadingContextFactory(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    clock = Clock()
    wall = [now.timestamp()]
    return ExpiryWarnings(contexts, clock, wallclock=lambda: wall[0]), clock, wall


def warnings(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e.get("event") == "certificate_expiring"]


def test_each_threshold_warns_once_as_time_passes(tmp_path: Path) -> None:
    watch, clock, wall = watcher(tmp_path, days=31)
    with capturedLogs() as events:
        watch.start()
        for _ in range(31 * 24):  # a month, hour by hour
            wall[0] += 3600
            clock.advance(3600)
    found = warnings(events)
    assert len(found) == 3  # at 30, 7 and 1 days
    assert all(e["log_level"] == LogLevel.warn for e in found)
    assert [round(float(e["days"])) for e in found] == [30, 7, 1]  # type: ignore[arg-type]


def test_every_start_under_seven_days_warns(tmp_path: Path) -> None:
    for _ in range(2):  # two starts (two processes): each warns
        watch, _, _ = watcher(tmp_path, days=5)
        with capturedLogs() as events:
            watch.start()
        assert len(warnings(events)) == 1


def test_a_renewed_certificate_is_not_warned_about(tmp_path: Path) -> None:
    watch, clock, _ = watcher(tmp_path, days=5)
    watch.start()
    fresh = make_pair(trustme.CA())
    with capturedLogs() as events:
        write_atomically(tmp_path / "k.pem", fresh.key)
        write_atomically(tmp_path / "c.pem", fresh.chain)
        watch.contexts.getContext()
        clock.advance(3600)
    assert warnings(events) == []


def test_json_lines_have_stable_keys() -> None:
    out = io.StringIO()
    observer = json_observer(out)
    globalLogPublisher.addObserver(observer)
    try:
        Logger(namespace="t").warn(
            "{listener}: keeping certificate generation {generation}: {error}",
            listener="web", generation=3, error="bad", event="certificate_reload_failed",
            fingerprint="ab", other=object(),
        )  # fmt: skip
    finally:
        globalLogPublisher.removeObserver(observer)
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "certificate_reload_failed"
    assert record["level"] == "warn"
    assert record["message"] == "web: keeping certificate generation 3: bad"
    assert (record["listener"], record["generation"], record["fingerprint"]) == (
        "web",
        3,
        "ab",
    )
    assert record["time"].endswith("Z")
    assert set(record) <= {
        "time",
        "level",
        "event",
        "message",
        "namespace",
        *STABLE_KEYS,
    }


def test_other_events_are_named_log() -> None:
    line = format_json_line({"log_format": "hello {who}", "who": "x", "log_time": 0})
    assert json.loads(line)["event"] == "log"
    assert json.loads(line)["message"] == "hello x"
