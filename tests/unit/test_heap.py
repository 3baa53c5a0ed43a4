"""
L{tlsgate._heap}: a gateway process freezes what start-up made, once its
reactor runs, so that full garbage collections skip it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactor

from tlsgate._heap import settle, settle_when_running


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Whatever a test freezes is given back to the collector afterwards."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settling_freezes_what_is_alive_and_collects_what_is_not(
    unfrozen: None,
) -> None:
    class Cycle:
        pass

    garbage = Cycle()
    garbage.me = garbage  # type: ignore[attr-defined]
    del garbage
    kept = Cycle()  # an instance: the collector tracks it
    frozen = settle()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is not kept and type(o) is Cycle for o in gc.get_objects())
    assert kept not in gc.get_objects()  # frozen: no collection walks it
    after = Cycle()
    assert after in gc.get_objects()  # what comes later is collected as before


def test_it_waits_for_the_reactor_to_run(unfrozen: None) -> None:
    reactor = MemoryReactor()
    settle_when_running(reactor)
    assert gc.get_freeze_count() == 0
    reactor.run()  # MemoryReactor.run calls what waits for it to run
    assert gc.get_freeze_count() > 0
