"""
What a started gateway does to its own reactor, and only to it: its shared
timers keep their delayed call between connections (L{tlsgate._batch.linger}).
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from tlsgate import _batch
from tlsgate.config import parse_config
from tlsgate.service import build_service


def test_a_started_gateway_lets_its_reactors_shared_timers_linger(tmp: Path) -> None:
    reactor, other = MemoryReactorClock(), MemoryReactorClock()
    config = parse_config(
        "[listener:web]\nlisten = tcp:8443\nbackend = tcp:127.0.0.1:9\n"
        f"cert = {tmp / 'c.pem'}\nkey = {tmp / 'k.pem'}\n",
        file="g.ini",
    )
    service = build_service(config, reactor)
    try:
        assert reactor not in _batch.LINGERING
        service.privilegedStartService()
        service.startService()
        assert reactor in _batch.LINGERING and other not in _batch.LINGERING
        assert _batch.Batch(reactor, 1, print, "x").linger
        assert not _batch.Batch(other, 1, print, "x").linger
    finally:
        service.stopService()
        _batch.LINGERING.discard(reactor)
